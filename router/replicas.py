"""How the router reaches a variant's replicas: coalesced calls through its Serve handle.

The router's one wrapper around Ray and Serve on the request path: a call goes out as
`infer_many` on the variant's DeploymentHandle (Serve picks the replica), and Ray's and Serve's
ways of saying the replica is gone all become `ReplicaLost`, so nothing above this module
knows Ray exists. Requests are coalesced per variant (router/coalesce.py).
"""

from __future__ import annotations

import asyncio

from ray import exceptions as ray_errors
from ray.serve import exceptions as serve_errors

from quiver.serving import InferenceRequest, InferenceResult

from .coalesce import Coalescer, Pending
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
# waits for the router; more would only make each call, and so each batch, smaller.
CALLS_PER_REPLICA = 2


class ReplicaLost(Exception):
    """No replica of the variant answered the call: it died, or none is running."""


class VariantReplicas:
    """One variant's replicas as the router sees them: a queue, and calls to them."""

    def __init__(self, route: VariantRoute) -> None:
        self.route = route
        self._handle = route.handle.options(method_name="infer_many")
        replicas = route.variant.replicas
        # Serve may run up to this many; without knowing how many run now, allowing calls for
        # all of them costs only some coalescing, while allowing too few would leave replicas idle.
        most = replicas.autoscaling.max_replicas if replicas.autoscaling else replicas.count
        self._coalescer = Coalescer(
            self._send, lambda: CALLS_PER_REPLICA * most, route.variant.batching.max_batch_size, route.app
        )

    def submit(self, request: InferenceRequest, wait_s: float) -> Pending:
        """Queue the request; awaited, its result or its own error, `Expired` after `wait_s`,
        `ReplicaLost` if no replica answered, `Withdrawn` if cancelled."""
        return self._coalescer.submit(request, wait_s)

    async def _send(self, requests: list[InferenceRequest]) -> list[InferenceResult | Exception]:
        response = self._handle.remote(requests)
        try:
            return await response
        except _LOST as exc:
            raise ReplicaLost(repr(exc)) from exc
        except asyncio.CancelledError:
            response.cancel()  # nobody waits for it: the replica need not run it
            raise
