"""The router's view of its replicas, exported: each variant's readiness and replicas, the replica
directory's state, and (`quiver serve`) the version weights.

Readiness is decided when asked (router/health.py `ProbedReadiness.ready`: Serve's status, the
data plane and the probes together) and changes with time alone (a failed replica's cool-down
ends), so the gauges are set from it every `interval_s`, as grpc.health.v1's status is
(router/health.py `ServingHealth`). A variant gets its gauges, and its probe-failure count at 0,
as soon as it is in the route table, so one that never gets ready or traffic is seen all the
same; a version that leaves the table takes its series with it.

A cluster router's weights are its route table's, shown by router/catalog.py when it takes
effect; `quiver serve` has no route table, so its weights are what its traffic split does
(router/traffic.py `Traffic.weights`): shown here, whenever they change.
"""

from __future__ import annotations

import asyncio

from .endpoints import Endpoints
from .health import ProbedReadiness
from .metrics import RouterMetrics
from .routes import RouteTable
from .traffic import Traffic


class StateMetrics:
    def __init__(
        self,
        metrics: RouterMetrics,
        routes: RouteTable,
        readiness: ProbedReadiness,
        endpoints: Endpoints | None,
        traffic: Traffic | None,
    ) -> None:
        """`traffic`: the split whose weights to show (None where a route table shows them)."""
        self._metrics = metrics
        self._routes = routes
        self._readiness = readiness
        self._endpoints = endpoints
        self._traffic = traffic
        self._shown: set[tuple[str, str, str, str]] = set()
        self._weights: dict[str, dict[str, int]] | None = None

    def update(self) -> None:
        metrics = self._metrics
        shown = set()
        for route in self._routes.routes():
            labels = (*route.key, route.variant.pool)
            shown.add(labels)
            metrics.variant_ready.labels(*labels).set(int(self._readiness.ready(route)))
            metrics.variant_replicas.labels(*labels).set(self._readiness.replicas(route))
            metrics.probe_failures.labels(*labels)  # 0 until the first miss
        for labels in self._shown - shown:
            for family in (metrics.variant_ready, metrics.variant_replicas, metrics.probe_failures):
                family.remove(*labels)
        self._shown = shown
        if self._endpoints is not None:
            metrics.directory_up.set(int(self._endpoints.directory_up))
        if self._traffic is not None:
            weights = self._traffic.weights(self._routes.models())
            if weights != self._weights:  # replaced only on a change: a scrape meanwhile would find none
                metrics.show_routes(weights)
                self._weights = weights

    async def watch(self, interval_s: float = 0.25) -> None:
        """Update forever (a named task the router cancels on stop)."""
        while True:
            self.update()
            await asyncio.sleep(interval_s)
