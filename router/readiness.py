"""Which variants can answer now: those whose Serve application has all its replicas up.

Polled from Serve in the background (a status call is a round trip to the Serve controller,
too slow for the request path). A variant whose pool has no nodes stays not ready, and one
whose replicas could not start (a refused model file) is failed; the policy routes around both.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from quiver.serving import app_name, application_states

from .routes import RouteTable, VariantRoute, VersionRoutes

logger = logging.getLogger(__name__)


class Readiness:
    def __init__(
        self, routes: RouteTable, poll: Callable[[], dict[str, str]] = application_states, interval_s: float = 1.0
    ) -> None:
        self._routes = routes
        self._poll = poll
        self._interval_s = interval_s
        self._states: dict[str, str] = {}
        self._failing = False

    def ready(self, route: VariantRoute) -> bool:
        return self._states.get(app_name(route.version, route.variant)) == "RUNNING"

    def failed(self, route: VariantRoute) -> bool:
        return self._states.get(app_name(route.version, route.variant)) == "DEPLOY_FAILED"

    def version_ready(self, version: VersionRoutes) -> bool:
        return any(self.ready(route) for route in version.variants.values())

    def pending(self) -> list[VariantRoute]:
        return [route for route in self._routes.routes() if not self.ready(route)]

    async def refresh(self) -> None:
        self._states = await asyncio.to_thread(self._poll)

    async def watch(self) -> None:
        """Refresh forever (a named task the router cancels on stop)."""
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.refresh()
            except Exception as exc:  # noqa: BLE001 - a missed poll keeps the last answer; the next one may work
                if not self._failing:  # once until it recovers (a cluster router may start before Serve does)
                    logger.warning("could not read Serve's application status: %s", exc)
                self._failing = True
            else:
                self._failing = False
