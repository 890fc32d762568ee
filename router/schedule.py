"""Triton's schedule-policy parameters, `priority` and `timeout`, as Quiver's priority and deadline.

tritonclient sends them with `infer(priority=, timeout=)` through either door. `timeout` is in
microseconds and, like a gRPC deadline, bounds the request: the tighter of the two wins (HTTP has
no deadline of its own). Triton's `priority` counts from 1, the highest; 0 is the model's
default. Quiver has three levels (router/stats.py sheds low priority first and high priority
last), so 1 is high, 0 and 2 are normal, 3 and beyond are low. `quiver.priority`, when given
too, is the one that counts.
"""

from __future__ import annotations

from collections.abc import Mapping

from .errors import InvalidArgument

TIMEOUT, PRIORITY = "timeout", "priority"


def time_remaining_s(parameters: Mapping[str, object], transport_s: float | None) -> float | None:
    """Seconds until the request's deadline: the transport's or the `timeout` parameter's, whichever is sooner."""
    timeout_us = parameters.get(TIMEOUT)
    if timeout_us is None:
        return transport_s
    if isinstance(timeout_us, bool) or not isinstance(timeout_us, int) or timeout_us <= 0:
        raise InvalidArgument(f"parameter {TIMEOUT!r} must be a positive number of microseconds, got {timeout_us!r}")
    return timeout_us / 1e6 if transport_s is None else min(transport_s, timeout_us / 1e6)


def priority(parameters: Mapping[str, object]) -> int:
    """Quiver's priority level (-1, 0 or 1) for Triton's `priority` parameter; 0 when not given."""
    value = parameters.get(PRIORITY, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(f"parameter {PRIORITY!r} must be Triton's priority level, an integer ≥ 0 (1 is the highest), got {value!r}")
    return 1 if value == 1 else 0 if value in (0, 2) else -1
