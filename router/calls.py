"""Watchers of the router's calls to replicas: what dispatch tells others about each call.

Dispatch (router/dispatch.py) calls `started` once a call to a variant is sent and `finished`
when it ends, with the gRPC status the call came to; both run on the request's task, so the
request's context (its log id, its trace span) is current. Watchers do little and never raise:
they run on the request path. Two exist: router/health.py's `Reachability` keeps the calls
waiting on each variant (to cancel them when the variant is lost), and router/tracing.py's
`CallSpans` opens one span per call (only when tracing is on; otherwise it is not installed).
"""

from __future__ import annotations

from typing import Protocol

import grpc

from .routes import VariantRoute


class CallWatcher(Protocol):
    def started(self, route: VariantRoute, response: object, reason: str) -> object:
        """A request was handed to `route`'s replicas (`response` is its router/coalesce.py `Pending`:
        `cancel()` withdraws it); returns a token for `finished`."""
        ...

    def finished(self, token: object, code: grpc.StatusCode) -> None:
        """The call `token` stands for ended with `code`."""
        ...
