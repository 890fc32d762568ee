"""Dispatch: admit a request, choose its variant by policy, call it, retry once elsewhere.

Admission sheds load when every allowed variant's queue is full (RESOURCE_EXHAUSTED with a
retry hint); the call goes to the variant's replicas (router/replicas.py), bounded by the
request's deadline, and what comes back is translated here into the router's taxonomy. A request
that found no replica waits for a replacement while one may come (router/replacement.py).
It also keeps each variant's live statistics (the policy's input) and the metrics that export them,
and offers what was answered to the shadow comparisons and the capture (router/shadow.py), whose
live accuracy the policy reads and whose calls to the reference go through `_shadow_call`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
import numpy as np

from quiver.serving import DeadlinePassed, InferenceError, InferenceRequest, InferenceResult
from quiver.serving.capture import CaptureSettings
from quiver.serving.requests import rows as request_rows

from . import policy
from .auth import CAPTURE
from .calls import CallWatcher
from .coalesce import Expired, Withdrawn
from .endpoints import Endpoints
from .errors import DeadlineExceeded, InvalidArgument, ResourceExhausted, Unavailable
from .hints import RoutingHints
from .metrics import RouterMetrics
from .readiness import Readiness
from .replacement import ReplacementWait
from .replicas import ReplicaLost, VariantReplicas, calls_per_replica
from .routes import VariantRoute, VersionRoutes
from .shadow import Shadow, ShadowSettings
from .stats import VariantStats
from .traffic import TrafficSplit

logger = logging.getLogger(__name__)

# How much earlier than the router a client may see its deadline pass (the request's way in, on a busy host).
_HOP_SLACK_S = 0.1


@dataclass(frozen=True)
class Served:
    result: InferenceResult
    route: VariantRoute
    reason: str


class Dispatcher:
    """Admits, routes and sends each request; owns every variant's live statistics."""

    def __init__(
        self,
        metrics: RouterMetrics,
        readiness: Readiness,
        timeout_s: float = 30.0,
        clock: Callable[[], float] = time.perf_counter,
        watchers: Sequence[CallWatcher] = (),
        endpoints: Endpoints | None = None,
        replacement: ReplacementWait | None = None,
        shadow: ShadowSettings = ShadowSettings(),
        capture: CaptureSettings | None = None,
        split: Callable[[], TrafficSplit] = TrafficSplit,
        lookup: Callable[[str, str], VersionRoutes] | None = None,
    ) -> None:
        """`split` and `lookup`: the route table's weights and versions, for the Shadow steps it names."""
        self._metrics = metrics
        self._watchers = tuple(watchers)  # see router/calls.py
        self._readiness = readiness
        self._endpoints = endpoints  # the replicas' data planes; None: Serve's handles only
        # A call waits at most this long: a variant that lost its last replica (its pool's nodes
        # gone) holds calls in Serve's queue until a replica returns, which may be never.
        self._timeout_s = timeout_s
        self._replacement = replacement  # None: a request that finds no replica fails at once
        self._clock = clock
        self._stats: dict[tuple[str, str, str], VariantStats] = {}
        self._replicas: dict[str, VariantReplicas] = {}
        self._serving = 0  # client requests in flight, dispatched or waiting
        self.shadow = Shadow(
            shadow, metrics, self._shadow_call, self._admits_shadow, lambda: self._serving > 0, capture,
            split=split, lookup=lookup, pick=lambda version: version.variants[self.choose(version, RoutingHints()).variant],
        )

    def replicas(self, route: VariantRoute) -> VariantReplicas:
        """The variant's replicas, for this route (a new route table brings new ones; calls in flight keep theirs)."""
        found = self._replicas.get(route.app)
        if found is None or found.route is not route:
            metrics = self._metrics.variant(*route.key, route.variant.pool)
            found = self._replicas[route.app] = VariantReplicas(route, self._endpoints, metrics)
        return found

    def stats(self, route: VariantRoute) -> VariantStats:
        found = self._stats.get(route.key)
        if found is None:
            found = self._stats[route.key] = VariantStats(clock=self._clock)
        if found.variant is not route.variant:  # new, or a route table placed it anew: what was measured stays
            found.serve(route.variant, calls_per_replica(route.variant))
        # As many replicas as run (autoscaling moves it between route tables), else as many as asked for.
        found.replicas = self._readiness.replicas(route) or route.variant.replicas.count
        return found

    def candidates(self, version: VersionRoutes, skip_cooling: bool = True) -> list[policy.Candidate]:
        """The version's variants for the policy; with `skip_cooling`, those cooling down after a
        failure or drifted from their reference (and excluded for it) count as not ready."""
        now = self._clock()
        candidates = []
        for name, route in version.variants.items():
            stats = self.stats(route)
            cooling = skip_cooling and (stats.cooling(now) or self.shadow.excluded(route))
            candidates.append(policy.Candidate(
                name=name,
                precision=route.variant.precision,
                pool=route.variant.pool,
                accuracy=self.shadow.accuracy(version, route),
                ready=self._readiness.ready(route) and not cooling,
                stats=stats,
            ))
        return candidates

    def choose(
        self, version: VersionRoutes, hints: RoutingHints, excluded: frozenset[str] = frozenset(), rows: int = 1
    ) -> policy.Decision:
        """The policy's pick for a request of `rows` rows; variants that just failed are passed over while any other can serve."""
        default = version.manifest.default.name
        try:
            return policy.choose(self.candidates(version), default, hints, excluded, rows)
        except Unavailable:
            return policy.choose(self.candidates(version, skip_cooling=False), default, hints, excluded, rows)

    def admit(self, version: VersionRoutes, hints: RoutingHints, rows: int = 1) -> policy.Decision:
        """The policy's pick if its queue has room for the request's priority; else the next
        allowed variant that has room ("spill-over"); else the request is shed."""
        decision = self.choose(version, hints, rows=rows)
        full: set[str] = set()
        while not self.stats(version.variants[decision.variant]).admits(hints.priority):
            full.add(decision.variant)
            spill = None if hints.variant is not None else self._spill(version, hints, frozenset(full), rows)
            if spill is None:
                raise ResourceExhausted(
                    f"model {version.manifest.name!r}: every variant that may serve this request is at its queue limit",
                    retry_after_ms=max(1, round(self.stats(version.variants[decision.variant]).predicted_ms(rows))),
                )
            decision = spill
        return decision

    def _spill(self, version: VersionRoutes, hints: RoutingHints, full: frozenset[str], rows: int) -> policy.Decision | None:
        try:
            return policy.Decision(self.choose(version, hints, full, rows).variant, "spill-over")
        except (policy.NoVariantFits, Unavailable):
            return None

    async def infer(
        self, version: VersionRoutes, hints: RoutingHints, inputs: dict[str, np.ndarray], deadline_s: float | None = None
    ) -> Served:
        """Serve one request; `deadline_s` is the time it has left (None: no deadline)."""
        expires = None if deadline_s is None else self._clock() + deadline_s
        self._serving += 1
        try:
            while True:
                try:
                    served = await self._serve(version, hints, inputs, expires)
                    break
                except Unavailable:
                    if not await self._replaced(version, hints, expires):
                        raise
        finally:
            self._serving -= 1
        self.shadow.offer(version, served.route, inputs, served.result.outputs, CAPTURE.get())
        return served

    def _admits_shadow(self, route: VariantRoute) -> bool:
        return self._readiness.ready(route) and self.stats(route).admits_shadow()

    async def _shadow_call(self, route: VariantRoute, inputs: dict[str, np.ndarray]) -> InferenceResult:
        """One call for router/shadow.py: in the variant's statistics (it is load), not in the clients' metrics; never retried."""
        stats = self.stats(route)
        ticket = stats.started(request_rows(inputs))
        start, elapsed_ms = self._clock(), None
        try:
            result = await self.replicas(route).submit(InferenceRequest(inputs, time.time() + self._timeout_s), self._timeout_s)
            elapsed_ms = 1000 * (self._clock() - start)
            return result
        finally:
            stats.finished(ticket, elapsed_ms)

    async def _replaced(self, version: VersionRoutes, hints: RoutingHints, expires: float | None) -> bool:
        """Whether a variant that may serve the request can answer again after waiting for its replacement."""
        if self._replacement is None:
            return False
        allowed = [version.variants[c.name] for c in policy.constrained(self.candidates(version, skip_cooling=False), hints)]
        return await self._replacement.wait(
            version.version.key,
            [self.stats(route) for route in allowed],
            lambda: any(self._readiness.ready(route) for route in allowed),
            hints.priority,
            expires,
        )

    async def _serve(
        self, version: VersionRoutes, hints: RoutingHints, inputs: dict[str, np.ndarray], expires: float | None
    ) -> Served:
        rows = request_rows(inputs)
        decision = self.admit(version, hints, rows)
        route = version.variants[decision.variant]
        try:
            return Served(await self._call(route, inputs, decision.reason, expires), route, decision.reason)
        except Unavailable:
            if hints.variant is not None:
                raise
        # One retry: on another allowed variant if there is one, else on the same (Serve picks a live replica).
        try:
            retry = self.choose(version, hints, excluded=frozenset({decision.variant}), rows=rows)
        except (policy.NoVariantFits, Unavailable):
            retry = decision
        route = version.variants[retry.variant]
        return Served(await self._call(route, inputs, "retry", expires), route, "retry")

    async def _call(
        self, route: VariantRoute, inputs: dict[str, np.ndarray], reason: str, expires: float | None
    ) -> InferenceResult:
        metrics = self._metrics.variant(*route.key, route.variant.pool)
        start = self._clock()
        left = None if expires is None else expires - start
        if left is not None and left <= 0:
            metrics.requests(grpc.StatusCode.DEADLINE_EXCEEDED).inc()
            raise DeadlineExceeded("the deadline passed before the request was dispatched")
        stats = self.stats(route)
        logger.debug("dispatching to %s variant %s (%s)", route.version.key, route.variant.name, reason)
        metrics.decisions(reason).inc()
        ticket = stats.started(request_rows(inputs))
        metrics.in_flight.inc()
        code, elapsed_ms, failed_at = grpc.StatusCode.INTERNAL, None, None
        # The replica learns the deadline in wall-clock time: it runs in another process, maybe on another node.
        request = InferenceRequest(inputs, None if left is None else time.time() + left)
        pending = self.replicas(route).submit(request, self._timeout_s if left is None else min(left, self._timeout_s))
        watched = [watcher.started(route, pending, reason) for watcher in self._watchers]
        try:
            result = await pending
            code, elapsed_ms = grpc.StatusCode.OK, 1000 * (self._clock() - start)
            metrics.latency.observe(elapsed_ms / 1000)
            metrics.prediction_error.observe(abs(ticket.predicted_ms - elapsed_ms) / max(elapsed_ms, 1e-6))
            metrics.replica_queue.observe(result.queue_s)
            metrics.replica_compute.observe(result.compute_s)
            metrics.batch_requests.observe(result.batch_requests)
            return result
        except InferenceError as exc:
            code = grpc.StatusCode.INVALID_ARGUMENT
            raise InvalidArgument(f"model {route.manifest.name!r} rejected the input: {_cause(exc)}") from exc
        except DeadlinePassed as exc:
            code = grpc.StatusCode.DEADLINE_EXCEEDED
            raise DeadlineExceeded("the deadline passed while the request waited for its batch") from exc
        except Expired as exc:
            if left is not None and left <= self._timeout_s:
                code = grpc.StatusCode.DEADLINE_EXCEEDED
                raise DeadlineExceeded(f"no answer from variant {route.variant.name!r} within the deadline") from exc
            code, failed_at = grpc.StatusCode.UNAVAILABLE, self._clock()
            logger.warning("%s variant %s did not answer in %.0f s", route.version.key, route.variant.name, self._timeout_s)
            self._readiness.nudge()
            raise Unavailable(f"no replica of {route.version.key} variant {route.variant.name!r} could answer") from exc
        except asyncio.CancelledError:
            # gRPC cancels the handler when the client goes away, or when the deadline passes: the
            # client's timer fires first, its deadline having started a hop earlier than ours.
            # Counted as what it was, not INTERNAL.
            expired = expires is not None and self._clock() >= expires - _HOP_SLACK_S
            code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
            raise
        except (ReplicaLost, Withdrawn) as exc:  # Withdrawn: by router/health.py, the variant stopped answering its probes
            code, failed_at = grpc.StatusCode.UNAVAILABLE, self._clock()
            logger.warning("%s variant %s did not answer: %s", route.version.key, route.variant.name, exc)
            self._readiness.nudge()
            raise Unavailable(f"no replica of {route.version.key} variant {route.variant.name!r} could answer") from exc
        finally:
            for watcher, token in zip(self._watchers, watched):
                watcher.finished(token, code)
            stats.finished(ticket, elapsed_ms, failed_at)
            metrics.in_flight.dec()
            metrics.requests(code).inc()
            # Triton's statistics (router/statistics.py); `result` is bound whenever `code` is OK.
            ok = code is grpc.StatusCode.OK
            self._metrics.statistics.finished(route.manifest, code, self._clock() - start, request, result if ok else None)


def _cause(exc: InferenceError) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
