"""`quiver serve`: the whole stack on one machine, on a local Ray instance.

Starts Ray and Serve, deploys every variant of every model version as a Serve application,
then runs the same router a cluster runs, in this process (a Ray driver on the local node).
Prints one `ready:` line once requests can be served; SIGINT/SIGTERM drain and shut down.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from quiver.router import RouteTable, Router, RouterSettings, VariantRoute
from quiver.serving import ModelVersion, StoreError, deploy, example_version, from_onnx_file, load_store

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeSettings:
    model: Path | None = None  # a .onnx file or a store directory; None serves the example
    name: str | None = None
    num_cpus: int | None = None
    router: RouterSettings = field(default_factory=RouterSettings)


def serve_locally(settings: ServeSettings) -> int:
    with tempfile.TemporaryDirectory(prefix="quiver-") as scratch:
        try:
            versions = _model_versions(settings, Path(scratch))
        except StoreError as exc:
            print(f"quiver: {exc}", file=sys.stderr)
            return 2
        routes = _start_ray_and_deploy(versions, settings.num_cpus or _cpus_to_fit(versions))
        try:
            asyncio.run(_run_router(routes, settings.router))
        finally:
            _stop_ray()
    return 0


def _model_versions(settings: ServeSettings, scratch: Path) -> list[ModelVersion]:
    if settings.model is None:
        return [example_version(scratch)]
    if settings.model.is_dir():
        return load_store(settings.model)
    return [from_onnx_file(settings.model, name=settings.name)]


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


def _start_ray_and_deploy(versions: list[ModelVersion], num_cpus: int) -> RouteTable:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    # The router is the only ingress: Serve's own HTTP/gRPC proxies would be a second door.
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    serve.start(proxy_location="Disabled", logging_config={"log_level": "WARNING"})
    return RouteTable(
        VariantRoute(version, variant, deploy(version, variant))
        for version in versions
        for variant in version.manifest.variants
    )


def _stop_ray() -> None:
    import ray

    # The router has drained every request by now, and this local instance is ours alone:
    # stopping Ray ends the replicas at once (serve.shutdown's graceful path takes ~30 s).
    ray.shutdown()


async def _run_router(routes: RouteTable, settings: RouterSettings) -> None:
    router = Router(routes, settings)
    port = await router.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    models = ",".join(f"{name}:{'|'.join(versions)}" for name, versions in routes.models().items())
    metrics = f" metrics=http://{settings.host}:{router.metrics_port}/metrics" if router.metrics_port else ""
    print(f"ready: {settings.host}:{port} models={models}{metrics}", flush=True)
    await stop.wait()
    logger.warning("shutting down: draining requests for up to %.0f s", settings.grace_period_s)
    await router.stop()
