"""The router's error taxonomy: each error carries the gRPC status it is answered with.

Every failure a client can cause or see is one of these; `status_of` is the one place that
turns an exception into a status. Anything else is a bug: INTERNAL, details in the log only.
"""

from __future__ import annotations

import grpc


class RouterError(Exception):
    """An error the client is told about, with its message."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class NotFound(RouterError):
    """Unknown model, version or variant."""

    code = grpc.StatusCode.NOT_FOUND


class InvalidArgument(RouterError):
    """The request is malformed or does not match the model's signature."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class Unavailable(RouterError):
    """No replica could answer: it died, or the deployment is down."""

    code = grpc.StatusCode.UNAVAILABLE


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, RouterError):
        return exc.code, str(exc)
    return grpc.StatusCode.INTERNAL, "internal error; the router's log has the details"
