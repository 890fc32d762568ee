"""The request id in every log line the router writes while serving a request.

The servicer sets it per call (the request's `id`, or a fresh one); a logging filter copies it
onto each record, so a line about a lost replica or a refused input names the request it
concerns. Lines written outside a request carry none.
"""

from __future__ import annotations

import contextvars
import logging
import uuid

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("quiver_request_id", default="-")


def begin_request(request_id: str) -> str:
    """Mark the current task as serving `request_id` (a fresh id when the client sent none)."""
    value = request_id or uuid.uuid4().hex[:16]
    REQUEST_ID.set(value)
    return value


class RequestIdFilter(logging.Filter):
    """Sets `record.request` to " [request <id>]" while a request is served, "" otherwise."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = REQUEST_ID.get()
        record.request = "" if request_id == "-" else f" [request {request_id}]"
        return True
