"""Which variants can answer now: those whose Serve application has a replica running.

Polled from Serve in the background (a status call is a round trip to the Serve controller,
too slow for the request path). An application scaling, updating or replacing a dead replica
still answers with the replicas it runs; so does one with a replica on the direct data plane
(router/endpoints.py), which a replica joins at the end of its start, before Serve's next status
says it runs. A variant whose pool has no nodes stays not ready, and one whose replicas could not
start (a refused model file) is failed; the policy routes around both.

A poll is not cheap: `serve.status()` has the controller describe every application and
replica, and this process turn the answer into pydantic models — tens of ms of CPU each time,
which on a one-CPU share cost ~5 % of the throughput when done every second. So the watch polls
every `interval_s` only while some variant is not running (it may come up any moment) or after
the dispatcher saw a variant fail (`nudge`); while everything runs, every `steady_interval_s`.
Failures need no poll to be routed around: the dispatcher's cool-down does that at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from quiver.serving import AppState, application_states

from .routes import RouteTable, VariantRoute, VersionRoutes

logger = logging.getLogger(__name__)


class Readiness:
    def __init__(
        self,
        routes: RouteTable,
        poll: Callable[[], dict[str, AppState]] = application_states,
        interval_s: float = 1.0,
        steady_interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        direct: Callable[[str], bool] = lambda app: False,
    ) -> None:
        self._routes = routes
        self._direct = direct  # whether an application has a replica on the data plane now
        self._poll = poll
        self._interval_s = interval_s
        self._steady_interval_s = steady_interval_s
        self._clock = clock
        self._states: dict[str, AppState] = {}
        self._failing = False
        self._nudged = asyncio.Event()
        self._polled_at = float("-inf")

    def ready(self, route: VariantRoute) -> bool:
        state = self._states.get(route.app)
        return (state is not None and state.answers) or self._direct(route.app)

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
        self._states = await asyncio.to_thread(self._poll)

    def next_poll_in(self) -> float:
        """Seconds until the watch polls again, unless nudged."""
        settled = not self._failing and not self.pending()
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
                if not self._failing:  # once until it recovers (a cluster router may start before Serve does)
                    logger.warning("could not read Serve's application status: %s", exc)
                self._failing = True
            else:
                self._failing = False
