"""The routing policy: which variant of a model version serves one request.

1. Hard constraints from the request (`quiver.precision`, `quiver.pool`, `quiver.min_accuracy`
   against the candidate's accuracy: the manifest's, or lower where the live agreement with the
   reference says so, router/shadow.py) leave the candidates; if one removes them all,
   the request fails naming it (FAILED_PRECONDITION). Variants still starting (their pool has
   no nodes yet) are routed around; if none is ready: UNAVAILABLE.
2. With a latency budget (`quiver.latency_budget_ms`, tightened by the gRPC deadline): the most
   accurate candidate whose predicted latency fits ("budget"); if none fits, the fastest
   ("best-effort"). Predictions are for the request's rows, and fit when scaled to what the
   variant's predictions for that size have missed by lately (90th percentile:
   router/stats.py), since the budget is each request's, not the median's.
3. Without one: the manifest's default variant ("default"), unless it is saturated and another
   candidate is not: then the most accurate of those ("spill-over"). A deadline alone only
   moves a request off a default predicted to miss it, as a budget would ("budget").
4. A prediction is corrected only by answers (router/stats.py): a variant the budget never
   chooses keeps the one it started from, right or wrong. So a candidate that would have won
   had it been predicted faster (any other, when none fits; a more accurate one, when one does)
   is sent one request once the budget has passed it over `explore_every` times and it had
   none for `explore_after_s` ("explore"): at most one request in fifty, and two a second,
   per variant, and never outside the request's constraints.
A pinned variant (`quiver.variant`) bypasses the policy ("pinned").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from quiver.serving import Precision

from .errors import NotFound, RouterError, Unavailable
from .hints import MIN_ACCURACY, POOL, PRECISION, RoutingHints
from .stats import VariantStats


class NoVariantFits(RouterError):
    """The request's constraints rule out every variant of the model version."""

    code = grpc.StatusCode.FAILED_PRECONDITION


@dataclass(frozen=True)
class Candidate:
    name: str
    precision: Precision
    pool: str
    accuracy: float | None  # as `quiver optimize` measured it, or lower as live traffic shows; None when never measured
    ready: bool
    stats: VariantStats


@dataclass(frozen=True)
class Decision:
    variant: str
    reason: str


def choose(
    candidates: Sequence[Candidate], default: str, hints: RoutingHints, excluded: frozenset[str] = frozenset(), rows: int = 1
) -> Decision:
    if hints.variant is not None:
        return _pinned(candidates, hints.variant)
    allowed = constrained(candidates, hints, excluded)
    ready = [c for c in allowed if c.ready]
    if not ready:
        raise Unavailable(f"no variant that fits the request can answer now (not ready: {[c.name for c in allowed]})")

    if hints.latency_budget_ms is not None:
        return _within(ready, hints.latency_budget_ms, rows)

    preferred = next((c for c in ready if c.name == default), None) or max(ready, key=lambda c: _accuracy_then_speed(c, rows))
    if hints.deadline_ms is not None and _tail_ms(preferred, rows) > hints.deadline_ms:
        return _within(ready, hints.deadline_ms, rows)
    if preferred.stats.saturated:
        others = [c for c in ready if c is not preferred and not c.stats.saturated]
        if others:
            return Decision(max(others, key=lambda c: _accuracy_then_speed(c, rows)).name, "spill-over")
    return Decision(preferred.name, "default" if preferred.name == default else "most-accurate")


def constrained(candidates: Sequence[Candidate], hints: RoutingHints, excluded: frozenset[str] = frozenset()) -> list[Candidate]:
    """The candidates the request may be served by, ready or not: the pinned one, or those its
    hard constraints leave (NoVariantFits names the constraint that left none)."""
    if hints.variant is not None:
        return [c for c in candidates if c.name == hints.variant]
    allowed = [c for c in candidates if c.name not in excluded]
    for parameter, value, keep in (
        (PRECISION, hints.precision, lambda c: c.precision is hints.precision),
        (POOL, hints.pool, lambda c: c.pool == hints.pool),
        (MIN_ACCURACY, hints.min_accuracy, lambda c: c.accuracy is not None and c.accuracy >= hints.min_accuracy),
    ):
        if value is None:
            continue
        kept = [c for c in allowed if keep(c)]
        if not kept:
            offered = ", ".join(f"{c.name} ({c.precision.value}, pool {c.pool}, accuracy {c.accuracy})" for c in allowed)
            raise NoVariantFits(f"no variant meets {parameter}={getattr(value, 'value', value)}; candidates: {offered or 'none'}")
        allowed = kept
    return allowed


def _within(ready: Sequence[Candidate], budget_ms: float, rows: int) -> Decision:
    predicted = {c.name: c.stats.predicted_ms(rows) for c in ready}  # once each (a profile's walks the calls in flight)
    fitting = [c for c in ready if predicted[c.name] * c.stats.overruns.factor(rows) <= budget_ms]
    if fitting:
        chosen = Decision(max(fitting, key=lambda c: (_accuracy(c), -predicted[c.name])).name, "budget")
    else:
        chosen = Decision(min(ready, key=lambda c: predicted[c.name]).name, "best-effort")
    return _explored(ready, chosen) or chosen


def _explored(ready: Sequence[Candidate], chosen: Decision) -> Decision | None:
    """The most accurate candidate that could have won and is due to be explored, if any; every
    one that could have won counts this request as passed over."""
    winner = next(c for c in ready if c.name == chosen.variant)
    could_win = [
        c for c in ready if c is not winner and (chosen.reason == "best-effort" or _accuracy(c) > _accuracy(winner))
    ]
    due = [c for c in could_win if c.stats.passed_over()]
    return Decision(max(due, key=_accuracy).name, "explore") if due else None


def _pinned(candidates: Sequence[Candidate], name: str) -> Decision:
    chosen = next((c for c in candidates if c.name == name), None)
    if chosen is None:
        raise NotFound(f"no variant {name!r}; the model has {sorted(c.name for c in candidates)}")
    if not chosen.ready:
        raise Unavailable(f"variant {name!r} is not ready yet (its pool {chosen.pool!r} may have no nodes)")
    return Decision(name, "pinned")


def _tail_ms(candidate: Candidate, rows: int) -> float:
    return candidate.stats.predicted_ms(rows) * candidate.stats.overruns.factor(rows)


def _accuracy_then_speed(candidate: Candidate, rows: int) -> tuple[float, float]:
    return _accuracy(candidate), -candidate.stats.predicted_ms(rows)


def _accuracy(candidate: Candidate) -> float:
    return candidate.accuracy if candidate.accuracy is not None else float("-inf")
