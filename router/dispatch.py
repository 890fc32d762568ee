"""Dispatch: send decoded inputs to a variant's replicas through its Serve DeploymentHandle.

The router's one wrapper around Ray: Ray's and Serve's exceptions are translated here into
the router's taxonomy, so nothing above this module knows Ray exists.
"""

from __future__ import annotations

import logging

import numpy as np
from ray import exceptions as ray_errors
from ray.serve import exceptions as serve_errors

from quiver.serving import InferenceError, InferenceResult

from .errors import InvalidArgument, Unavailable
from .routes import VariantRoute

logger = logging.getLogger(__name__)

# The replica (or its process, node or deployment) is gone; another replica may answer later.
_REPLICA_LOST = (
    ray_errors.RayActorError,
    ray_errors.WorkerCrashedError,
    ray_errors.NodeDiedError,
    serve_errors.DeploymentUnavailableError,
    serve_errors.ReplicaUnavailableError,
    serve_errors.BackPressureError,
)


async def infer(route: VariantRoute, inputs: dict[str, np.ndarray]) -> InferenceResult:
    try:
        return await route.handle.infer.remote(inputs)
    except InferenceError as exc:
        # Ray re-raises the replica's exception as a subclass of it (RayTaskError).
        raise InvalidArgument(f"model {route.manifest.name!r} rejected the input: {_cause(exc)}") from exc
    except _REPLICA_LOST as exc:
        logger.warning("replica of %s/%s lost: %s", route.version.key, route.variant.name, exc)
        raise Unavailable(f"no replica of {route.version.key} variant {route.variant.name!r} could answer") from exc


def _cause(exc: InferenceError) -> str:
    cause = exc.cause if isinstance(exc, ray_errors.RayTaskError) else exc
    return str(cause).splitlines()[0] if str(cause) else type(cause).__name__
