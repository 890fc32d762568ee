"""Rollout gates on their own: a step's verdict from two samples of the routers' counters."""

from __future__ import annotations

import math

from quiver.operator.gates import Outcome, Sample, judge
from quiver.operator.spec import Gates

BOUNDS = (0.01, 0.025, 0.05, 0.1, 0.25, math.inf)


def sample(requests: float, errors: float, latencies_s: list[float]) -> Sample:
    return Sample(requests, errors, {le: float(sum(t <= le for t in latencies_s)) for le in BOUNDS})


def test_a_step_is_judged_on_its_own_requests_only() -> None:
    before = sample(1000, 500, [0.2] * 1000)  # a bad past does not count against this step
    after = sample(1100, 500, [0.2] * 1000 + [0.004] * 100)
    verdict = judge(before, after, Gates(max_error_rate=0.01, max_p99_latency_ms=20, min_requests=50))
    assert verdict.outcome is Outcome.PASS, verdict.message
    assert verdict.requests == 100 and verdict.error_rate == 0 and verdict.p99_ms < 10


def test_error_rate_and_latency_breaches_say_what_was_measured() -> None:
    errors = judge(sample(0, 0, []), sample(100, 5, [0.004] * 95), Gates(max_error_rate=0.01))
    assert errors.outcome is Outcome.BREACH and "error rate 5.00% above 1.00%" in errors.message
    slow = judge(sample(0, 0, []), sample(100, 0, [0.004] * 90 + [0.2] * 10), Gates(max_p99_latency_ms=50))
    assert slow.outcome is Outcome.BREACH and slow.p99_ms > 100 and "above 50 ms" in slow.message


def test_too_few_requests_wait_and_a_restarted_router_is_not_a_breach() -> None:
    assert judge(sample(0, 0, []), sample(5, 5, [0.3] * 5), Gates(min_requests=20)).outcome is Outcome.WAIT
    # A router that restarted reports counters below the baseline.
    assert judge(sample(500, 0, [0.01] * 500), sample(3, 0, [0.01] * 3), Gates()).outcome is Outcome.WAIT


def test_a_sample_survives_the_status_round_trip() -> None:
    original = sample(10, 1, [0.003] * 9 + [1.0])
    assert Sample.from_status(original.to_status()) == original
