"""Routing hints: what a request asks of the variant that serves it.

They ride in the request's `parameters` (strings, integers and booleans only, so every client
can send them) under `quiver.*` names. The gRPC deadline tightens an asked-for latency budget;
alone, it only steers a request away from a default variant that could not answer in time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from quiver.serving import Precision

from . import schedule
from .errors import InvalidArgument

VARIANT = "quiver.variant"
PRECISION = "quiver.precision"
POOL = "quiver.pool"
LATENCY_BUDGET_MS = "quiver.latency_budget_ms"
MIN_ACCURACY = "quiver.min_accuracy"
PRIORITY = "quiver.priority"


@dataclass(frozen=True)
class RoutingHints:
    variant: str | None = None  # an exact variant name: no policy
    precision: Precision | None = None
    pool: str | None = None
    latency_budget_ms: float | None = None  # asked for; already tightened by the deadline
    deadline_ms: float | None = None  # time left before the gRPC deadline
    min_accuracy: float | None = None  # against the accuracy routing sees (router/shadow.py)
    priority: int = 0  # below 0: shed first; above 0: shed last

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, object], deadline_ms: float | None = None) -> RoutingHints:
        budget = _number(parameters, LATENCY_BUDGET_MS, minimum=0.0)
        if budget is not None and deadline_ms is not None:  # whichever is tighter
            budget = min(budget, deadline_ms)
        precision = _text(parameters, PRECISION)
        if precision is not None and precision not in {p.value for p in Precision}:
            raise InvalidArgument(f"parameter {PRECISION!r}: {precision!r} is not one of {[p.value for p in Precision]}")
        return cls(
            variant=_text(parameters, VARIANT),
            precision=Precision(precision) if precision else None,
            pool=_text(parameters, POOL),
            latency_budget_ms=budget,
            deadline_ms=deadline_ms,
            min_accuracy=_number(parameters, MIN_ACCURACY, minimum=0.0),
            priority=_priority(parameters),
        )


def _text(parameters: Mapping[str, object], key: str) -> str | None:
    value = parameters.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"parameter {key!r} must be a non-empty string")
    return value


def _number(parameters: Mapping[str, object], key: str, minimum: float) -> float | None:
    value = parameters.get(key)
    if value is None:
        return None
    # Strings too: some clients can only send string parameters.
    try:
        number = float(value) if not isinstance(value, bool) else None
    except ValueError:
        number = None
    if number is None or number != number or number < minimum:
        raise InvalidArgument(f"parameter {key!r} must be a number ≥ {minimum:g}, got {value!r}")
    return number


def _priority(parameters: Mapping[str, object]) -> int:
    if PRIORITY not in parameters:  # Triton's, if any
        return schedule.priority(parameters)
    value = parameters[PRIORITY]
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"parameter {PRIORITY!r} must be an integer, got {value!r}")
    return value
