"""Which variants can answer now: those whose Serve application has a replica running.

Polled from Serve in the background (a status call is a round trip to the Serve controller,
too slow for the request path). An application scaling, updating or replacing a dead replica
still answers with the replicas it runs; so does one with a replica on the direct data plane
(router/endpoints.py), which a replica joins at the end of its start, before Serve's next status
says it runs. A variant whose pool has no nodes stays not ready, and one whose replicas could not
start (a refused model file) is failed; the policy routes around both.

The data plane outweighs Serve where they disagree: Serve counts a replica that has just died with
its node as running for tens of seconds, while the router's calls to it already fail. So Serve's
running replicas count only beyond those the data plane has found unreachable; otherwise a status
read a moment after a crash would make the variant ready again until the router's probes declare
it lost (router/health.py).

A poll is not cheap: `serve.status()` has the controller describe every application and
replica, and this process turn the answer into pydantic models — tens of ms of CPU each time,
which on a one-CPU share cost ~5 % of the throughput when done every second. So the watch polls
every `interval_s` only while some variant is not running (it may come up any moment) or after
the dispatcher saw a variant fail (`nudge`); while everything runs, every `steady_interval_s`.
Failures need no poll to be routed around: the dispatcher's cool-down does that at once.

A poll that does not come back within `poll_timeout_s` counts as failed: while Ray's head is
away, Serve's status waits for it. `cluster_problem` says why the last poll failed (the
router's health reports it); the states last read stay in force, since the replicas they name
may well still answer on the data plane.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from quiver.serving import AppState, application_states, in_daemon_thread

from .routes import RouteTable, VariantRoute, VersionRoutes

logger = logging.getLogger(__name__)


class DataPlane(Protocol):
    """What the router's data plane (router/endpoints.py `Endpoints`) knows of a variant's replicas."""

    def serves(self, app: str) -> bool:
        """Whether a replica of the application may take a call now."""
        ...

    def unreachable(self, app: str) -> int:
        """How many of the application's replicas failed a call a moment ago."""
        ...

    def listed(self, app: str) -> int:
        """How many of the application's replicas the replica directory lists."""
        ...


class Readiness:
    def __init__(
        self,
        routes: RouteTable,
        poll: Callable[[], dict[str, AppState]] = application_states,
        interval_s: float = 1.0,
        steady_interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        data_plane: DataPlane | None = None,
        poll_timeout_s: float = 5.0,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._routes = routes
        self._on_change = on_change  # told after every poll (router/replacement.py: requests waiting for a replica)
        self._data_plane = data_plane
        self._poll = poll
        self._interval_s = interval_s
        self._steady_interval_s = steady_interval_s
        self._clock = clock
        self._poll_timeout_s = poll_timeout_s
        self._polling: asyncio.Future[dict[str, AppState]] | None = None
        self._states: dict[str, AppState] = {}
        self.cluster_problem: str | None = None  # why Serve's status could not be read, while it cannot
        self._nudged = asyncio.Event()
        self._polled_at = float("-inf")

    def ready(self, route: VariantRoute) -> bool:
        if self._data_plane is None:
            return self.said_to_run(route)
        if self._data_plane.serves(route.app):
            return True
        state = self._states.get(route.app)
        return state is not None and state.running > self._data_plane.unreachable(route.app)

    def said_to_run(self, route: VariantRoute) -> bool:
        """Whether Serve's status or the data plane says a replica of the variant runs, be it reachable or not."""
        state = self._states.get(route.app)
        return (state is not None and state.answers) or (self._data_plane is not None and self._data_plane.serves(route.app))

    def replicas(self, route: VariantRoute) -> int:
        """How many of the variant's replicas run: Serve's count, or the data plane's when it lists
        more (a replica joins it before Serve's next status says it runs)."""
        state = self._states.get(route.app)
        listed = self._data_plane.listed(route.app) if self._data_plane is not None else 0
        return max(state.running if state is not None else 0, listed)

    def failed(self, route: VariantRoute) -> bool:
        state = self._states.get(route.app)
        return state is not None and state.status == "DEPLOY_FAILED" and not state.answers

    def version_ready(self, version: VersionRoutes) -> bool:
        return any(self.ready(route) for route in version.variants.values())

    def pending(self) -> list[VariantRoute]:
        return [route for route in self._routes.routes() if not self.ready(route)]

    def nudge(self) -> None:
        """Poll soon (within `interval_s`): a variant just failed a call, its status may have changed."""
        self._nudged.set()

    async def refresh(self) -> None:
        self._polled_at = self._clock()
        if self._polling is None or self._polling.done():  # a poll still out is awaited again, not doubled
            self._polling = in_daemon_thread(self._poll, "quiver-serve-status")
        self._states = await asyncio.wait_for(asyncio.shield(self._polling), self._poll_timeout_s)
        self._on_change()

    def next_poll_in(self) -> float:
        """Seconds until the watch polls again, unless nudged."""
        settled = self.cluster_problem is None and not self.pending()
        return max(0.0, self._polled_at + (self._steady_interval_s if settled else self._interval_s) - self._clock())

    async def watch(self) -> None:
        """Refresh forever (a named task the router cancels on stop)."""
        while True:
            try:
                await asyncio.wait_for(self._nudged.wait(), self.next_poll_in())
            except asyncio.TimeoutError:
                pass
            # Nudges come in bursts (every request that found the variant gone): one poll per interval at most.
            await asyncio.sleep(max(0.0, self._polled_at + self._interval_s - self._clock()))
            self._nudged.clear()
            try:
                await self.refresh()
            except Exception as exc:  # noqa: BLE001 - a missed poll keeps the last answer; the next one may work
                problem = (
                    f"Serve's application status did not come back within {self._poll_timeout_s:g} s"
                    if isinstance(exc, asyncio.TimeoutError)
                    else f"Serve's application status could not be read: {exc}"
                )
                if self.cluster_problem is None:  # once until it recovers (a cluster router may start before Serve does)
                    logger.warning("%s", problem)
                self.cluster_problem = problem
            else:
                if self.cluster_problem is not None:
                    logger.warning("reading Serve's application status again")
                self.cluster_problem = None
