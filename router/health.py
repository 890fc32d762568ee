"""Whether each variant's replicas still answer, and what grpc.health.v1 says about the inference service.

Serve's application status (router/readiness.py) lags a crash by tens of seconds: when a node
dies with its processes (a pod or machine lost, not drained), Ray keeps its actors "alive"
until its health checks give up, and calls to them wait. The router finds out on its own:

- `Reachability` sends every running variant a probe (`ready`, a round trip that runs nothing)
  each `interval_s`; a variant that answered before (a probe or a call: a node may be lost
  before a freshly started router's first probe came back) and then misses `failures` probes
  in a row (each bounded by `timeout_s`, or four times its calls' recent duration when that is
  longer), with no call to it coming back meanwhile, is *lost*. Requests waiting on a lost
  variant are cancelled, so dispatch retries them elsewhere at once (or answers UNAVAILABLE), and the
  policy routes around it; it is found again by its next answered probe, once Serve has a
  replica up. Every probe missed is counted (`quiver_probe_failures_total`). Variants that may
  scale to zero are not probed. A variant with a replica on the data plane is probed there, so
  that it stays in service while Ray's head is away.
- `ProbedReadiness` is the readiness the rest of the router sees: Serve's view, less the
  variants that are lost.
- `ServingHealth` keeps the health status of `inference.GRPCInferenceService` equal to
  ServerReady (every model version has a variant that can answer), with a logged reason when
  it changes. The server's overall status ("") stays SERVING while the process serves: every
  router loses the cluster at once, and a router that stays behind the Service can still tell
  clients why (UNAVAILABLE with a reason) rather than leave them without an endpoint.
  The service `ray` is NOT_SERVING while Serve's status cannot be read: the Ray head is
  away, and nothing new can be deployed, scaled or replaced until it is back.

The server starts `Reachability.watch` and `ServingHealth.watch` as named tasks and cancels them on stop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2

from .endpoints import Endpoints
from .errors import Unavailable
from .metrics import RouterMetrics
from .readiness import Readiness
from .routes import RouteTable, VariantRoute, VersionRoutes

logger = logging.getLogger(__name__)

CLUSTER_SERVICE = "ray"  # the health service that says whether the router can read Serve's status
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _probe(route: VariantRoute) -> Awaitable[object]:
    return route.handle.ready.remote()


def probe_via(endpoints: Endpoints | None) -> Callable[[VariantRoute], Awaitable[object]]:
    """A variant's probe: an empty call on the data plane when one of its replicas is there (it
    answers while Ray's head is away, as the variant's calls do), else `ready` through Serve's handle."""

    def probe(route: VariantRoute) -> Awaitable[object]:
        replica = endpoints.pick(route.app) if endpoints is not None else None
        return endpoints.call(replica, []) if replica is not None else _probe(route)

    return probe


@dataclass
class _Variant:
    answered: bool = False  # has answered a probe or a call since the router started
    misses: int = 0  # probes missed in a row
    lost_since: float | None = None
    last_answer: float = float("-inf")  # when a call to it last came back OK: as good as a probe
    call_s: float = 0.0  # moving average of its calls' durations (OK ones): how slow "alive" is now
    # Requests waiting on this variant (router/coalesce.py `Pending`s): withdrawn when it is lost.
    waiting: set = field(default_factory=set)


class Reachability:
    def __init__(
        self,
        routes: RouteTable,
        serving: Callable[[VariantRoute], bool],
        probe: Callable[[VariantRoute], Awaitable[object]] = _probe,
        interval_s: float = 0.5,
        timeout_s: float = 1.0,
        failures: int = 2,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[], None] = lambda: None,
        metrics: RouterMetrics | None = None,
    ) -> None:
        self._routes = routes
        self._on_change = on_change  # told when a lost variant answers again (router/replacement.py)
        self._metrics = metrics  # counts the probes that got no answer
        self._serving = serving  # is a replica of the variant said to run (by Serve, or the data plane)?
        self._probe = probe
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._failures = failures
        self._clock = clock
        self._variants: dict[tuple[str, str], _Variant] = {}

    def _state(self, route: VariantRoute) -> _Variant:
        key = (route.version.key, route.variant.name)
        state = self._variants.get(key)
        if state is None:
            state = self._variants[key] = _Variant()
        return state

    def answering(self, route: VariantRoute) -> bool:
        state = self._variants.get((route.version.key, route.variant.name))
        return state is None or state.lost_since is None

    def reason(self, route: VariantRoute) -> str | None:
        state = self._variants.get((route.version.key, route.variant.name))
        if state is None or state.lost_since is None:
            return None
        return (
            f"{route.version.key} variant {route.variant.name!r} (pool {route.variant.pool!r}) has not answered "
            f"the router's probes for {self._clock() - state.lost_since + self._failures * self._interval_s:.0f} s"
        )

    # A CallWatcher (router/calls.py): dispatch reports every call to a replica.
    def started(self, route: VariantRoute, response: object, reason: str) -> object:
        """A call to `route` waits on `response`; on a lost variant it is cancelled at once."""
        state = self._state(route)
        if state.lost_since is not None:
            response.cancel()
        else:
            state.waiting.add(response)
        return state, response, self._clock()

    def finished(self, token: object, code: grpc.StatusCode) -> None:
        state, response, start = token
        state.waiting.discard(response)
        if code is grpc.StatusCode.OK:
            state.answered = True
            state.last_answer = now = self._clock()
            state.call_s += 0.2 * (now - start - state.call_s)

    def _patience(self, state: _Variant) -> float:
        """How long a probe may take: longer while the variant's calls are slow (a busy machine is not a dead node)."""
        return max(self._timeout_s, 4 * state.call_s)

    async def probe_all(self) -> None:
        """One round: every variant Serve runs, or that was lost, or that calls wait on, gets one bounded probe.

        (Serve may mark a variant not running while calls still wait on its dead replicas: they
        are cancelled only once its probes fail.) Variants that may scale to zero replicas are
        left alone: a probe would wake them.
        """
        current = self._routes.routes()
        keys = {(r.version.key, r.variant.name) for r in current}
        for key in [key for key in self._variants if key not in keys]:  # versions rolled out of the table
            del self._variants[key]
        routes = [r for r in current if (self._serving(r) or not self.answering(r) or self._state(r).waiting) and not _scales_to_zero(r)]
        results = await asyncio.gather(*(self._probe_one(route) for route in routes))
        for route, answered in zip(routes, results):
            self._record(route, answered)

    async def _probe_one(self, route: VariantRoute) -> bool:
        response = self._probe(route)
        try:
            await asyncio.wait_for(_awaited(response), self._patience(self._state(route)))
        except Exception:  # noqa: BLE001 - timed out, or the replica is gone: either way, no answer
            cancel = getattr(response, "cancel", None)
            if cancel is not None:
                cancel()
            return False
        return True

    def _record(self, route: VariantRoute, answered: bool) -> None:
        state = self._state(route)
        if answered:
            state.answered, state.misses = True, 0
            if state.lost_since is not None:
                logger.warning("%s variant %s answers again", route.version.key, route.variant.name)
                state.lost_since = None
                self._on_change()
            return
        if self._metrics is not None:  # every miss, a busy variant's too: the count shows how close it came to lost
            self._metrics.probe_failures.labels(*route.key, route.variant.pool).inc()
        if self._clock() - state.last_answer < self._patience(state) + self._interval_s:
            return  # busy, not gone: a call came back while the probe waited
        state.misses += 1
        if state.answered and state.lost_since is None and state.misses >= self._failures:
            state.lost_since = self._clock()
            logger.warning("%s", self.reason(route))
            for response in state.waiting:
                response.cancel()  # dispatch sees the replica lost: retry elsewhere, or UNAVAILABLE
            state.waiting.clear()

    async def watch(self) -> None:
        """Probe forever (a named task the router cancels on stop)."""
        while True:
            await asyncio.sleep(self._interval_s)
            await self.probe_all()


def _scales_to_zero(route: VariantRoute) -> bool:
    scaling = route.variant.replicas.autoscaling
    return scaling is not None and scaling.min_replicas == 0


async def _awaited(response) -> object:
    return await response


class ProbedReadiness(Readiness):
    """Serve's readiness, less the variants whose replicas stopped answering the router's probes."""

    def __init__(
        self,
        routes: RouteTable,
        *args,
        probe: Callable[[VariantRoute], Awaitable[object]] = _probe,
        probe_timeout_s: float = 1.0,
        metrics: RouterMetrics | None = None,
        **kwargs,
    ) -> None:
        super().__init__(routes, *args, **kwargs)
        self.reachability = Reachability(
            routes, self.said_to_run, probe, timeout_s=probe_timeout_s, on_change=self._on_change, metrics=metrics
        )

    def ready(self, route: VariantRoute) -> bool:
        return super().ready(route) and self.reachability.answering(route)

    def why_not(self, route: VariantRoute) -> str:
        """Why `route` cannot answer now, in words for a client."""
        lost = self.reachability.reason(route)
        if lost is not None:
            return lost
        if self.failed(route):
            return f"{route.version.key} variant {route.variant.name!r} could not start"
        return f"{route.version.key} variant {route.variant.name!r} has no running replicas (pool {route.variant.pool!r})"


def explained(exc: Unavailable, readiness: Readiness, version: VersionRoutes) -> Unavailable:
    """`exc` with the reasons the version's variants cannot answer, for the client."""
    why_not = getattr(readiness, "why_not", None)
    reasons = [why_not(route) for route in version.variants.values() if not readiness.ready(route)] if why_not else []
    return Unavailable(f"{exc}: {'; '.join(reasons)}") if reasons else exc


class ServingHealth:
    """The inference service's grpc.health.v1 status, following ServerReady; and the Ray cluster's
    (service `ray`), NOT_SERVING while Serve's status cannot be read (its head is away, say)."""

    def __init__(self, service: str, servicer: health.aio.HealthServicer, routes: RouteTable, readiness: ProbedReadiness) -> None:
        self._service = service
        self._servicer = servicer
        self._routes = routes
        self._readiness = readiness
        self._status: int | None = None
        self._served = False  # has been SERVING since the start
        self._cluster_status: int | None = None

    def problems(self) -> list[str]:
        """What keeps the server from being ready; empty when every model version can be served."""
        problems = []
        for route_versions in _versions(self._routes):
            if not self._readiness.version_ready(route_versions):
                problems.extend(self._readiness.why_not(route) for route in route_versions.variants.values())
        if not problems and not self._routes.routes():
            problems.append("no model is routed yet")
        return problems

    async def update(self) -> None:
        problems = self.problems()
        status = NOT_SERVING if problems else SERVING
        if status != self._status:
            if problems and self._status is None:  # at start: variants still starting
                logger.info("inference service NOT_SERVING: %s", "; ".join(problems))
            elif problems:
                logger.warning("inference service NOT_SERVING: %s", "; ".join(problems))
            elif self._served:
                logger.warning("inference service SERVING again")
            self._served |= status == SERVING
            self._status = status
            await self._servicer.set(self._service, status)  # (ignored once the server drains)
        # Readiness logs the cluster's problem; the inference service stays SERVING while variants answer.
        cluster = SERVING if self._readiness.cluster_problem is None else NOT_SERVING
        if cluster != self._cluster_status:
            self._cluster_status = cluster
            await self._servicer.set(CLUSTER_SERVICE, cluster)

    async def watch(self, interval_s: float = 0.25) -> None:
        while True:
            await self.update()
            await asyncio.sleep(interval_s)


def _versions(routes: RouteTable) -> list:
    return [routes.lookup(model, version) for model, versions in routes.models().items() for version in versions]
