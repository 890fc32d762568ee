"""Readiness polling (router/readiness.py): often while a variant is pending or just failed, rarely once all run."""

from __future__ import annotations

import asyncio
from pathlib import Path

from quiver.router.readiness import Readiness
from quiver.router.routes import RouteTable, VariantRoute
from quiver.serving import Manifest, ModelVersion, app_name


def table() -> tuple[RouteTable, str]:
    manifest = Manifest.model_validate({
        "name": "m", "version": "1",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 1]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}],
        "variants": [{"name": "a", "file": "m.onnx", "sha256": "0" * 64}],
    })
    version = ModelVersion(manifest, Path("."))
    return RouteTable([VariantRoute(version, manifest.variants[0], handle=None)]), app_name(version, manifest.variants[0])


def test_polls_fast_while_pending_slowly_once_running_and_soon_after_a_nudge() -> None:
    routes, app = table()
    states = {app: "DEPLOYING"}
    polls: list[str] = []

    def poll() -> dict[str, str]:
        polls.append(states[app])
        return dict(states)

    async def scenario() -> None:
        readiness = Readiness(routes, poll, interval_s=0.02, steady_interval_s=60)
        watch = asyncio.create_task(readiness.watch())
        try:
            await asyncio.sleep(0.2)
            assert len(polls) >= 4, polls  # pending: every interval
            assert not readiness.ready(routes.lookup("m").variants["a"])
            states[app] = "RUNNING"
            await asyncio.sleep(0.1)
            assert readiness.ready(routes.lookup("m").variants["a"])
            settled = len(polls)
            await asyncio.sleep(0.2)
            assert len(polls) == settled  # all running: the next poll is a minute away
            states[app] = "UNHEALTHY"
            for _ in range(10):  # a burst of failed calls
                readiness.nudge()
            await asyncio.sleep(0.1)
            assert not readiness.ready(routes.lookup("m").variants["a"])
            assert 1 <= len(polls) - settled <= 6  # polled soon, at most once per interval
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)

    asyncio.run(scenario())
