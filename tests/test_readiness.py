"""Readiness (router/readiness.py): a variant answers while any replica runs; polled often while
one is pending or just failed, rarely once all run."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from quiver.router.readiness import Readiness
from quiver.router.routes import RouteTable, VariantRoute
from quiver.serving import AppState, Manifest, ModelVersion, app_name


def table() -> tuple[RouteTable, str]:
    manifest = Manifest.model_validate({
        "name": "m", "version": "1",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 1]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}],
        "variants": [{"name": "a", "file": "m.onnx", "sha256": "0" * 64}],
    })
    version = ModelVersion(manifest, Path("."))
    return RouteTable([VariantRoute(version, manifest.variants[0], handle=None)]), app_name(version, manifest.variants[0])


async def until(condition, what: str, timeout_s: float = 30) -> None:
    """Wait for `condition`; the generous timeout only bounds a test that would otherwise hang."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def test_polls_fast_while_pending_slowly_once_running_and_soon_after_a_nudge() -> None:
    routes, app = table()
    states = {app: AppState("DEPLOYING", 0)}
    polls: list[AppState] = []

    def poll() -> dict[str, AppState]:
        polls.append(states[app])
        return dict(states)

    async def scenario() -> None:
        # Its clock stands still: every wait it computes is a whole interval, and next_poll_in() is exact.
        readiness = Readiness(routes, poll, interval_s=0.02, steady_interval_s=60, clock=lambda: 0.0)
        route = routes.lookup("m").variants["a"]
        watch = asyncio.create_task(readiness.watch())
        try:
            await until(lambda: len(polls) >= 4, "polls every interval while pending")
            assert not readiness.ready(route)
            states[app] = AppState("RUNNING", 1)
            await until(lambda: readiness.ready(route), "the poll that finds it running")
            settled = len(polls)
            assert readiness.next_poll_in() == 60  # all running: the next poll is a minute away
            for _ in range(10):  # a burst of failed calls, though Serve still runs it
                readiness.nudge()
            # 30 s: well within the minute, so it is the nudge's poll, not the schedule's.
            await until(lambda: len(polls) > settled, "the poll the nudges ask for")
            # One poll for the burst. (A sleep can only miss a second one, never fail a correct watch.)
            await asyncio.sleep(0.2)
            assert len(polls) == settled + 1 and readiness.next_poll_in() == 60
            states[app] = AppState("UNHEALTHY", 0)  # its one replica died
            readiness.nudge()
            await until(lambda: not readiness.ready(route), "the poll after its one replica died")
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)

    asyncio.run(scenario())


def test_an_application_answers_with_the_replicas_it_runs_whatever_its_status() -> None:
    routes, app = table()
    route = routes.lookup("m").variants["a"]
    for state, ready, failed in [
        (AppState("RUNNING", 2), True, False),
        (AppState("UNHEALTHY", 1), True, False),  # one of two replicas died: the other answers
        (AppState("DEPLOYING", 1), True, False),  # scaling up or updating
        (AppState("DEPLOYING", 0), False, False),  # starting, or its pool has no node
        (AppState("DEPLOY_FAILED", 0), False, True),
    ]:
        readiness = Readiness(routes, lambda: {app: state})
        asyncio.run(readiness.refresh())
        assert (readiness.ready(route), readiness.failed(route)) == (ready, failed), state


@dataclass
class DataPlaneView:
    """What router/endpoints.py would say of the variant's replicas."""

    live: int
    unreachable_: int

    def serves(self, app: str) -> bool:
        return self.live > 0

    def unreachable(self, app: str) -> int:
        return self.unreachable_

    def listed(self, app: str) -> int:
        return self.live + self.unreachable_


def test_the_data_plane_outweighs_serve_where_they_disagree() -> None:
    routes, app = table()
    route = routes.lookup("m").variants["a"]
    # `replicas`: what quiver_variant_replicas shows, the larger of Serve's count and the directory's.
    for serve, data_plane, ready, replicas in [
        (AppState("UNHEALTHY", 0), DataPlaneView(1, 0), True, 1),  # a replica on the data plane before Serve's status says it runs
        # Its node just crashed: the router's calls to it fail, Serve still counts it as running.
        (AppState("RUNNING", 1), DataPlaneView(0, 1), False, 1),
        (AppState("RUNNING", 2), DataPlaneView(0, 1), True, 2),  # Serve runs one more than the data plane lost
        (AppState("RUNNING", 2), DataPlaneView(1, 1), True, 2),
    ]:
        readiness = Readiness(routes, lambda: {app: serve}, data_plane=data_plane)
        asyncio.run(readiness.refresh())
        assert readiness.ready(route) == ready, (serve, data_plane)
        assert readiness.replicas(route) == replicas, (serve, data_plane)
        assert readiness.said_to_run(route)  # so the router's probes find out whether it still answers


def test_a_poll_that_hangs_reports_the_cluster_and_keeps_the_last_states_until_it_answers() -> None:
    """While Ray's head is away Serve's status waits for it: the poll times out, once, not a thread per interval."""
    routes, app = table()
    route = routes.lookup("m").variants["a"]
    head_away, head_back = threading.Event(), threading.Event()
    hung: list[float] = []

    def poll() -> dict[str, AppState]:
        if head_away.is_set() and not head_back.is_set():
            hung.append(time.monotonic())
            head_back.wait(120)  # bounded, so that the test ends whatever happens
        return {app: AppState("RUNNING", 1)}

    async def scenario() -> None:
        readiness = Readiness(routes, poll, interval_s=0.02, steady_interval_s=0.02, poll_timeout_s=0.1)
        await readiness.refresh()
        head_away.set()
        watch = asyncio.create_task(readiness.watch())
        try:
            await until(lambda: readiness.cluster_problem is not None, "the poll to time out")
            assert readiness.cluster_problem == "Serve's application status did not come back within 0.1 s"
            assert readiness.ready(route)  # its replicas may well still answer: the last states stand
            # More polls time out meanwhile. (A sleep can only miss a second one out, never fail a correct watch.)
            await asyncio.sleep(0.5)
            assert len(hung) == 1  # one poll out, awaited again rather than repeated
            head_back.set()
            await until(lambda: readiness.cluster_problem is None, "the poll to come back")
        finally:
            head_back.set()
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)

    asyncio.run(scenario())
