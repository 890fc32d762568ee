"""`quiver router`: the router of a cluster, serving the routes the operator writes.

Runs in router pods. With `--join` it first makes its pod a Ray node that offers no CPUs or
GPUs (a Ray driver needs a raylet on its own node, and no replica may land here), then
connects to the cluster as a driver. It deploys nothing: the operator deploys the Serve
applications and writes the routes file (router/catalog.py), which this process follows.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from dataclasses import dataclass

from quiver.lifecycle import run_router
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

    if settings.join:
        started = subprocess.run(
            ["ray", "start", f"--address={settings.ray_address}", "--num-cpus=0", "--num-gpus=0", "--disable-usage-stats"]
            + ([f"--node-ip-address={settings.node_ip}"] if settings.node_ip else []),
            capture_output=True,
            text=True,
        )
        if started.returncode != 0:
            print(f"quiver: could not join the Ray cluster at {settings.ray_address}:\n{started.stderr}", file=sys.stderr)
            return 1
    ray.init(address=settings.ray_address, logging_level=logging.WARNING, _node_ip_address=settings.node_ip)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)

    async def route() -> int:
        async def until_ready() -> None:
            pass  # the operator names a version only once its applications run

        # Made inside the loop: the gRPC server binds to the loop it is created in.
        return await run_router(Router(RouteTable(), settings.router), until_ready)

    try:
        return asyncio.run(route())
    finally:
        ray.shutdown()  # disconnects this driver; the cluster and its applications stay
