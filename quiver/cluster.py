"""`quiver router`: the router of a cluster, serving the routes the operator writes.

Runs in router pods. With `--join` it first makes its pod a Ray node that offers no CPUs or
GPUs (a Ray driver needs a raylet on its own node, and no replica may land here), then
connects to the cluster as a driver. It deploys nothing: the operator deploys the Serve
applications and writes the routes file (router/catalog.py), which this process follows.

The node is joined only once `ray start` has finished starting it: a driver can attach to the
node's raylet earlier, but a `ray start` that then fails its own startup (it waits for the GCS,
which may be away just then) stops the node under the driver, leaving a router that can never
read Serve again.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from quiver.lifecycle import run_process, run_router
from quiver.router import Router, RouterSettings, RouteTable

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterRouterSettings:
    ray_address: str  # the head's GCS, HOST:PORT
    join: bool  # start a CPU-less Ray node in this container first (a router pod)
    router: RouterSettings
    # The joined node's address. A driver attaches to a raylet on its host, preferring the
    # head's: where several nodes share a host, only the address tells this one apart.
    node_ip: str | None = None


def route_cluster(settings: ClusterRouterSettings) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray ends a process that cannot reach the GCS for 60 s. A head pod rescheduled elsewhere can
    # take longer to return, and meanwhile the replicas' data plane serves: wait for it longer.
    os.environ.setdefault("RAY_gcs_rpc_server_reconnect_timeout_s", "600")
    import ray

    node = None
    try:
        node = _join(settings) if settings.join else None
        ray.init(address=settings.ray_address, logging_level=logging.WARNING, _node_ip_address=settings.node_ip)
    except Exception as exc:  # noqa: BLE001 - said plainly, with the node's own output above it
        print(f"quiver: could not join the Ray cluster at {settings.ray_address}: {exc}", file=sys.stderr)
        _leave(node)
        return 1
    logging.getLogger("ray.serve").setLevel(logging.WARNING)

    async def route() -> int:
        async def until_ready() -> None:
            pass  # the operator names a version only once its applications run

        # Made inside the loop: the gRPC server binds to the loop it is created in.
        return await run_router(Router(RouteTable(), settings.router), until_ready)

    try:
        return run_process(route())
    finally:
        ray.shutdown()  # disconnects this driver; the cluster and its applications stay
        _leave(node)


# `ray start --block` prints this once its node is up, and then only watches it.
NODE_STARTED = "This command will now block forever"


def _join(settings: ClusterRouterSettings, timeout_s: float = 300) -> subprocess.Popen:
    """This container as a Ray node without CPUs or GPUs, owned by this process: `ray start --block`
    stops the node's processes when it is told to, and ends if one of them dies. Returns once the
    node has started (its output goes on to the router's log)."""
    ray_cli = Path(sys.executable).with_name("ray")
    node = subprocess.Popen(
        [str(ray_cli) if ray_cli.exists() else "ray", "start", "--block", f"--address={settings.ray_address}",
         "--num-cpus=0", "--num-gpus=0", "--disable-usage-stats"]
        + ([f"--node-ip-address={settings.node_ip}"] if settings.node_ip else []),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    started = threading.Event()

    def forward() -> None:
        for line in node.stdout:
            sys.stderr.write(line)
            if NODE_STARTED in line:
                started.set()

    threading.Thread(target=forward, name="quiver-ray-node-output", daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while not started.wait(0.5):
        if node.poll() is not None:
            raise RuntimeError(f"`ray start` ended with exit status {node.returncode} before its node was up")
        if time.monotonic() > deadline:
            _leave(node)
            raise RuntimeError(f"`ray start` did not start this node within {timeout_s:g} s")
    return node


def _leave(node: subprocess.Popen | None) -> None:
    if node is not None and node.poll() is None:
        node.terminate()
        try:
            node.wait(30)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()
