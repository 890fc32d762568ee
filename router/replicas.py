"""How the router reaches a variant's replicas: coalesced calls, direct or through Serve's handle.

Requests are coalesced per variant (router/coalesce.py); each call goes to a replica's data
plane when the replica directory lists one (router/endpoints.py, picked by the power of two
choices), else as `infer_many` on the variant's DeploymentHandle (Serve picks the replica).
This is the router's one wrapper around Ray and Serve on the request path: every way of
saying that the replica is gone becomes `ReplicaLost`, so nothing above this module knows Ray exists.
"""

from __future__ import annotations

import asyncio

from ray import exceptions as ray_errors
from ray.serve import exceptions as serve_errors

from quiver.serving import InferenceError, InferenceRequest, InferenceResult, ReplicaUnreachable, Variant
from quiver.serving import segments

from .coalesce import Coalescer, Pending
from .endpoints import Endpoints
from .metrics import VariantMetrics
from .routes import VariantRoute

# The replica (or its process, node or deployment) is gone; another replica may answer later.
_LOST = (
    ray_errors.RayActorError,
    ray_errors.WorkerCrashedError,
    ray_errors.NodeDiedError,
    serve_errors.DeploymentUnavailableError,
    serve_errors.ReplicaUnavailableError,
    serve_errors.BackPressureError,
    serve_errors.RequestCancelledError,
)

# Calls in flight per replica: one being computed while the next travels, so the replica never
# waits for the router; more would only make each call, and so each batch, smaller. A variant
# whose batches wait for rows (`max_wait_ms`) is not held back: its replicas' batching queue
# combines calls, and a request held here would wait for a batch window before its own.
CALLS_PER_REPLICA = 2


def calls_per_replica(variant: Variant) -> int:
    """Calls the router keeps out to each replica at once (its own batching waits for more)."""
    return variant.replicas.max_ongoing_requests if variant.batching.max_wait_ms else CALLS_PER_REPLICA


class ReplicaLost(Exception):
    """No replica of the variant answered the call: it died, or none is running."""


class VariantReplicas:
    """One variant's replicas as the router sees them: a queue, and calls to them."""

    def __init__(self, route: VariantRoute, endpoints: Endpoints | None, metrics: VariantMetrics) -> None:
        self.route = route
        self._endpoints = endpoints
        self._metrics = metrics
        self._handle = route.handle.options(method_name="infer_many")
        replicas = route.variant.replicas
        # Through the handle the router does not know how many replicas run: allowing calls for
        # as many as Serve may run costs some coalescing, allowing too few would leave replicas idle.
        self._most = replicas.autoscaling.max_replicas if replicas.autoscaling else replicas.count
        self._per_replica = calls_per_replica(route.variant)
        self._coalescer = Coalescer(self._send, self._capacity, route.variant.batching.max_batch_size, route.app)

    def submit(self, request: InferenceRequest, wait_s: float) -> Pending:
        """Queue the request; awaited, its result or its own error, `Expired` after `wait_s`,
        `ReplicaLost` if no replica answered, `Withdrawn` if cancelled."""
        return self._coalescer.submit(request, wait_s)

    def _capacity(self) -> int:
        direct = len(self._endpoints.live(self.route.app)) if self._endpoints is not None else 0
        return self._per_replica * (direct or self._most)

    async def _send(self, requests: list[InferenceRequest]) -> list[InferenceResult | Exception]:
        self._metrics.call_requests.observe(len(requests))
        if self._endpoints is not None:
            # A replica that is stopping or gone usually refuses before it runs anything: the
            # call goes once more, to another replica (or Serve's handle), before its requests
            # fail (and are retried by the dispatcher).
            for attempt in range(2):
                replica = self._endpoints.pick(self.route.app)
                if replica is None:
                    break
                self._metrics.calls("direct").inc()
                try:
                    return await self._endpoints.call(replica, requests)
                except ReplicaUnreachable as exc:
                    if attempt:
                        raise ReplicaLost(str(exc)) from exc
        self._metrics.calls("serve").inc()
        refused = {i: error for i, request in enumerate(requests) if (error := _shrunk(request)) is not None}
        sent = [request for i, request in enumerate(requests) if i not in refused]
        if not sent:
            return [refused[i] for i in range(len(requests))]
        response = self._handle.remote(sent)
        try:
            answers = iter(await response)
        except _LOST as exc:
            raise ReplicaLost(repr(exc)) from exc
        except asyncio.CancelledError:
            response.cancel()  # nobody waits for it: the replica need not run it
            raise
        return [refused[i] if i in refused else next(answers) for i in range(len(requests))]


def _shrunk(request: InferenceRequest) -> InferenceError | None:
    """Why the request cannot go, if an input lies in a shared memory segment shrunk since it was checked:
    pickling it for Serve's handle would read past the segment's end and kill the router (SIGBUS)."""
    try:
        for array in request.inputs.values():
            segments.check_size(array)
    except segments.SegmentError as exc:
        return InferenceError(f"input in shared memory: {exc}")
    return None
