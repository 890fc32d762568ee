"""Requests wait for a variant's replacement replica (router/replacement.py), over a fake Serve handle:
answered once it comes within their deadline; failed with the reason when the deadline, the
window or the waiting room does not allow it; never for a variant that was never up."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from ray.serve import exceptions as serve_errors

from quiver.router.dispatch import Dispatcher
from quiver.router.errors import Unavailable
from quiver.router.hints import RoutingHints
from quiver.router.metrics import RouterMetrics
from quiver.router.readiness import Readiness
from quiver.router.replacement import DEADLINE_MARGIN_S, Changes, ReplacementWait
from quiver.router.routes import RouteTable, VariantRoute
from quiver.router.stats import VariantStats
from quiver.serving import AppState, InferenceResult, Manifest, ModelVersion, app_name


class Replica:
    """A Serve handle whose one replica can die and be replaced; Serve's status follows it."""

    def __init__(self) -> None:
        self.alive = True
        self.calls = 0

    def options(self, method_name: str) -> SimpleNamespace:
        assert method_name == "infer_many"
        return SimpleNamespace(remote=self._infer_many)

    def _infer_many(self, requests: list) -> asyncio.Future:
        self.calls += 1
        future = asyncio.get_running_loop().create_future()
        if self.alive:
            future.set_result([InferenceResult({"y": np.zeros((1, 1), np.float32)}, 1, 1) for _ in requests])
        else:
            future.set_exception(serve_errors.DeploymentUnavailableError("m"))
        return future

    def states(self, app: str) -> dict[str, AppState]:
        return {app: AppState("RUNNING" if self.alive else "UNHEALTHY", int(self.alive))}


def one_variant(window_s: float, queue_limit: int = 8) -> tuple[Dispatcher, Readiness, Replica, object]:
    manifest = Manifest.model_validate({
        "name": "m", "version": "1",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 1]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}],
        "variants": [{"name": "a", "file": "m.onnx", "sha256": "0" * 64, "replicas": {"max_queued_requests": queue_limit}}],
    })
    version = ModelVersion(manifest, Path("."))
    replica = Replica()
    routes = RouteTable([VariantRoute(version, manifest.variants[0], replica)])
    changes = Changes()
    app = app_name(version, manifest.variants[0])
    readiness = Readiness(routes, poll=lambda: replica.states(app), on_change=changes.notify)
    dispatcher = Dispatcher(RouterMetrics(), readiness, replacement=ReplacementWait(window_s, changes))
    return dispatcher, readiness, replica, routes.lookup("m")


X = {"x": np.zeros((1, 1), np.float32)}


async def _killed(dispatcher: Dispatcher, readiness: Readiness, replica: Replica, target: object) -> None:
    """Served once, then the replica dies and a request finds it gone (the variant is being replaced)."""
    await readiness.refresh()
    await dispatcher.infer(target, RoutingHints(), X)
    replica.alive = False
    with pytest.raises(Unavailable):  # its deadline leaves no room to wait
        await dispatcher.infer(target, RoutingHints(), X, deadline_s=DEADLINE_MARGIN_S + 0.01)
    await readiness.refresh()


def test_requests_with_room_wait_for_the_replacement_and_are_answered() -> None:
    async def scenario() -> list[str]:
        dispatcher, readiness, replica, target = one_variant(window_s=60)
        await _killed(dispatcher, readiness, replica, target)
        waiting = [asyncio.create_task(dispatcher.infer(target, RoutingHints(), X, deadline_s=30)) for _ in range(4)]
        await asyncio.sleep(0.05)
        assert not any(task.done() for task in waiting)  # parked, not failed
        replica.alive = True
        await readiness.refresh()  # Serve's status says the replacement runs: the waiters try again
        served = await asyncio.wait_for(asyncio.gather(*waiting), 10)
        return [s.route.variant.name for s in served]

    assert asyncio.run(scenario()) == ["a"] * 4


def test_a_wait_ends_with_the_reason_when_the_deadline_or_the_window_runs_out() -> None:
    async def scenario() -> None:
        dispatcher, readiness, replica, target = one_variant(window_s=60)
        await _killed(dispatcher, readiness, replica, target)
        with pytest.raises(Unavailable, match="variant"):
            await dispatcher.infer(target, RoutingHints(), X, deadline_s=0.3)

        dispatcher, readiness, replica, target = one_variant(window_s=0.3)
        await _killed(dispatcher, readiness, replica, target)
        with pytest.raises(Unavailable):  # no deadline: bounded by the window
            await dispatcher.infer(target, RoutingHints(), X)
        await asyncio.sleep(0.3)
        calls = replica.calls
        with pytest.raises(Unavailable):  # the window has passed: the variant is down, fail at once
            await asyncio.wait_for(dispatcher.infer(target, RoutingHints(), X, deadline_s=30), 5)
        assert replica.calls == calls  # admission saw it not ready: no call, no wait

    asyncio.run(scenario())


def test_the_waiting_room_is_bounded_and_low_priority_is_shed_first() -> None:
    async def scenario() -> int:
        dispatcher, readiness, replica, target = one_variant(window_s=60, queue_limit=2)
        await _killed(dispatcher, readiness, replica, target)
        waiting = [asyncio.create_task(dispatcher.infer(target, RoutingHints(), X, deadline_s=30)) for _ in range(2)]
        await asyncio.sleep(0.05)
        with pytest.raises(Unavailable):  # the room (the variant's queue limit, 2) is full
            await asyncio.wait_for(dispatcher.infer(target, RoutingHints(), X, deadline_s=30), 5)
        urgent = asyncio.create_task(dispatcher.infer(target, RoutingHints(priority=1), X, deadline_s=30))
        await asyncio.sleep(0.05)
        assert not urgent.done()  # high priority waits up to 1.5 × the limit
        replica.alive = True
        await readiness.refresh()
        return len(await asyncio.wait_for(asyncio.gather(*waiting, urgent), 10))

    assert asyncio.run(scenario()) == 3


def test_a_variant_that_never_answered_fails_at_once() -> None:
    async def scenario() -> None:
        dispatcher, readiness, replica, target = one_variant(window_s=60)
        replica.alive = False  # e.g. its pool has no nodes: nothing is being replaced
        await readiness.refresh()
        with pytest.raises(Unavailable):
            await asyncio.wait_for(dispatcher.infer(target, RoutingHints(), X, deadline_s=30), 5)

    asyncio.run(scenario())


def test_down_since_marks_a_variant_that_answered_then_failed() -> None:
    stats = VariantStats()
    for outcome in ((None, 1.0), (None, 2.0)):  # failures of a variant that never answered
        stats.finished(stats.started(), *outcome)
    assert stats.down_since is None
    stats.finished(stats.started(), 5.0)
    for now in (3.0, 4.0):
        stats.finished(stats.started(), None, now)
    assert stats.down_since == 3.0  # from the first failure on
    stats.finished(stats.started(), 5.0)
    assert stats.down_since is None
