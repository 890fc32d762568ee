"""The router's error taxonomy: each error carries the gRPC status it is answered with.

Every failure a client can cause or see is one of these; `status_of` is the one place that
turns an exception into a status. Anything else is a bug: INTERNAL, details in the log only.
"""

from __future__ import annotations

import grpc


class RouterError(Exception):
    """An error the client is told about, with its message."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    # When set, sent as `grpc-retry-pushback-ms`: gRPC's own hint for when to try again.
    retry_after_ms: int | None = None


class NotFound(RouterError):
    """Unknown model, version or variant."""

    code = grpc.StatusCode.NOT_FOUND


class InvalidArgument(RouterError):
    """The request is malformed or does not match the model's signature."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class Unavailable(RouterError):
    """No replica could answer: it died, or the deployment is down."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(RouterError):
    """The request's deadline passed before it could be answered; its work was not started."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class AlreadyExists(RouterError):
    """What the request would create is there already (a shared memory region's name)."""

    code = grpc.StatusCode.ALREADY_EXISTS


class Unimplemented(RouterError):
    """A method of the protocol Quiver does not serve (yet); the message says why."""

    code = grpc.StatusCode.UNIMPLEMENTED


class FailedPrecondition(RouterError):
    """The request cannot be served in the state the router is in; the message says what would."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(RouterError):
    """Every variant that may serve the request is at its queue limit: shed, not queued."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_ms: int) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, RouterError):
        return exc.code, str(exc)
    return grpc.StatusCode.INTERNAL, "internal error; the router's log has the details"
