"""`quiver serve`: the whole stack on one machine (a local Ray instance), or joined to a cluster.

Starts Ray and Serve (or connects to a running cluster with `--address`), deploys every variant
of every model version as a Serve application, placed on its pool's nodes, then runs the same
router a cluster runs, in this process (a Ray driver on a node with a raylet). Prints one
`ready:` line once every variant whose pool has nodes can answer; variants of pools without
nodes stay pending and the router routes around them. SIGINT/SIGTERM drain and shut down.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from quiver.lifecycle import run_process, run_router
from quiver.router import RouteTable, Router, RouterSettings, VariantRoute
from quiver.serving import (
    IntegrityError,
    ModelVersion,
    StoreError,
    app_name,
    deploy_all,
    example_version,
    from_onnx_file,
    load_store,
    node_resources,
    pools_with_nodes,
    variant_bytes,
)
from quiver.serving import signing
from quiver.serving.crypto import read_key

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeSettings:
    model: Path | None = None  # a .onnx file or a store directory; None serves the example
    name: str | None = None
    address: str | None = None  # a running Ray cluster to join; None starts a local instance
    pools: tuple[str, ...] | None = None  # pools the local node belongs to; None: cpu (+ gpu if present)
    num_cpus: int | None = None
    ready_timeout_s: float = 300.0
    model_key: Path | None = None  # decrypts variants encrypted at rest
    verify_keys: tuple[Path, ...] = ()  # when given, every version must carry a signature one of them verifies
    router: RouterSettings = field(default_factory=RouterSettings)


def serve_locally(settings: ServeSettings) -> int:
    with tempfile.TemporaryDirectory(prefix="quiver-") as scratch:
        try:
            versions = _verified(_model_versions(settings, Path(scratch)), settings.model_key, settings.verify_keys)
        except (StoreError, OSError, ValueError) as exc:
            print(f"quiver: {exc}", file=sys.stderr)
            return 2
        routes = _start_ray_and_deploy(versions, settings)
        try:
            return run_process(_run_router(routes, settings))
        finally:
            _stop_ray(routes, joined=settings.address is not None)


def _model_versions(settings: ServeSettings, scratch: Path) -> list[ModelVersion]:
    if settings.model is None:
        return [example_version(scratch)]
    if settings.model.is_dir():
        return load_store(settings.model)
    return [from_onnx_file(settings.model, name=settings.name)]


def _verified(versions: list[ModelVersion], key_file: Path | None, verify_keys: tuple[Path, ...]) -> list[ModelVersion]:
    """The versions that check out (signature, digests, decryption); the others are refused
    with a logged reason and not deployed, while the rest serve."""
    key = read_key(key_file) if key_file else None
    accepted = []
    for version in versions:
        try:
            if verify_keys:
                signing.verify(version.directory, list(verify_keys), version.key)
            for variant in version.manifest.variants:
                variant_bytes(version, variant, key)
        except IntegrityError as exc:
            logger.error("refusing %s: %s", version.key, exc)
            continue
        accepted.append(version)
    if not accepted:
        raise StoreError("no model version passed its integrity checks")
    return accepted


def local_pools() -> tuple[str, ...]:
    """cpu, and gpu when this machine shows an NVIDIA GPU."""
    smi = shutil.which("nvidia-smi")
    has_gpu = bool(smi) and subprocess.run([smi, "-L"], capture_output=True, text=True).stdout.strip() != ""
    return ("cpu", "gpu") if has_gpu else ("cpu",)


def _cpus_to_fit(versions: list[ModelVersion]) -> int:
    """Logical CPUs for the local Ray node: all of them, or more so that every replica fits.

    Ray counts CPUs as reservations, not cores: a store with more replicas than this machine
    has cores still serves (the replicas share the cores) instead of waiting forever.
    """
    cores = os.cpu_count() or 1
    wanted = math.ceil(sum(v.replicas.count * v.replicas.num_cpus for version in versions for v in version.manifest.variants))
    if wanted > cores:
        logger.warning("replicas reserve %d CPUs, this machine has %d cores: they will share them", wanted, cores)
    return max(cores, wanted)


def _start_ray_and_deploy(versions: list[ModelVersion], settings: ServeSettings) -> RouteTable:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    if settings.address is not None:
        ray.init(address=settings.address, logging_level=logging.WARNING)
    else:
        # Serve's controller wakes every 0.1 s by default: ~3 % of a CPU at idle, taken from the
        # replicas on a small machine. Every 0.5 s costs a deployment step or a scaling decision
        # at most half a second more (benchmarks/NOTES.md).
        os.environ.setdefault("RAY_SERVE_CONTROL_LOOP_INTERVAL_S", "0.5")
        ray.init(
            # A new instance of our own, even when another cluster runs on this machine
            # (without this, ray.init joins the one `ray start` last recorded in /tmp/ray).
            address="local",
            num_cpus=settings.num_cpus or _cpus_to_fit(versions),
            resources=node_resources(list(settings.pools or local_pools())),
            include_dashboard=False,
            logging_level=logging.WARNING,
        )
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    # The router is the only ingress: Serve's own HTTP/gRPC proxies would be a second door.
    serve.start(proxy_location="Disabled", logging_config={"log_level": "WARNING"})
    handles = deploy_all(versions, settings.model_key)
    return RouteTable(
        VariantRoute(version, variant, handles[app_name(version, variant)])
        for version in versions
        for variant in version.manifest.variants
    )


def _stop_ray(routes: RouteTable, joined: bool) -> None:
    import ray
    from ray import serve

    if joined:  # the cluster is not ours: take back only what this process deployed
        for route in routes.routes():
            serve.delete(app_name(route.version, route.variant), _blocking=False)
    # Locally, the router has drained every request by now and the instance is ours alone:
    # stopping Ray ends the replicas at once (serve.shutdown's graceful path takes ~30 s).
    ray.shutdown()


async def _wait_until_ready(router: Router, routes: RouteTable, timeout_s: float) -> list[VariantRoute]:
    """Wait for every variant whose pool has nodes; returns those left pending (pools without nodes)."""
    deadline = time.monotonic() + timeout_s
    while True:
        await router.readiness.refresh()
        present = await asyncio.to_thread(pools_with_nodes)
        waiting = [
            route
            for route in router.readiness.pending()
            if route.variant.pool in present and not router.readiness.failed(route)
        ]
        if not waiting:
            return router.readiness.pending()
        if time.monotonic() > deadline:
            raise TimeoutError(f"variants not ready after {timeout_s:.0f} s: {[r.version.key + '/' + r.variant.name for r in waiting]}")
        await asyncio.sleep(0.5)


@dataclass(frozen=True)
class StoreDeployer:
    """Loads and unloads the store's versions for the router's repository extension (router/repository.py),
    with the checks `quiver serve` makes at start."""

    store: Path
    settings: ServeSettings

    def deploy(self, versions: list[ModelVersion]) -> dict[str, object]:
        accepted = _verified(versions, self.settings.model_key, self.settings.verify_keys)
        if refused := sorted({v.key for v in versions} - {v.key for v in accepted}):
            raise StoreError(f"{refused} did not pass the integrity checks (the log says why)")
        return deploy_all(accepted, self.settings.model_key)

    def delete(self, apps: list[str]) -> None:
        from ray import serve

        for app in apps:
            serve.delete(app)  # waits while its replicas finish the requests they hold


async def _run_router(routes: RouteTable, settings: ServeSettings) -> int:
    store = settings.model if settings.model is not None and settings.model.is_dir() else None
    router = Router(routes, settings.router, deployer=StoreDeployer(store, settings) if store else None)

    async def until_ready() -> None:
        for route in await _wait_until_ready(router, routes, settings.ready_timeout_s):
            if router.readiness.failed(route):
                logger.error("%s variant %s could not start: see its replica's log", route.version.key, route.variant.name)
            else:
                logger.warning("%s variant %s waits for a node of pool %r", route.version.key, route.variant.name, route.variant.pool)

    return await run_router(router, until_ready)
