"""Rollout gates: a step's verdict from two samples of the routers' counters (the Shadow step's
among them), and the reconciler in its Shadow step reading a real router's /metrics page."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from quiver.operator.gates import Outcome, Sample, ShadowSample, judge, judge_shadow
from quiver.operator.kube import JobPhase, JobState
from quiver.operator.rollout import Reconciler
from quiver.operator.settings import OperatorSettings
from quiver.operator.spec import Gates, ShadowStep, parse_spec
from quiver.operator.status import ConditionType, Phase, Status
from quiver.router.metrics import RouterMetrics
from quiver.router.traffic import TrafficSplit
from quiver.serving import build_example, from_onnx_file, write_version
from quiver.serving.confidence import wilson_lower

from .test_rollout import FakeKube, FakeServe

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


def shadow_sample(calls: float, errors: float, rows: float, agreed: float, latencies_s: list[float]) -> ShadowSample:
    return ShadowSample(calls, errors, rows, agreed, {le: float(sum(t <= le for t in latencies_s)) for le in BOUNDS})


SHADOW = ShadowStep(sample_rate=0.5, min_samples=200)


def test_the_shadow_step_breaches_on_agreement_with_the_numbers_in_the_message() -> None:
    before = shadow_sample(50, 0, 50, 50, [0.004] * 50)  # the step counts from its baseline
    after = shadow_sample(350, 0, 350, 110, [0.004] * 350)
    verdict = judge_shadow(before, after, Gates(min_agreement=0.95), SHADOW)
    assert verdict.outcome is Outcome.BREACH
    assert verdict.rows == 300 and verdict.agreement == 0.2
    assert verdict.lower_bound == wilson_lower(60, 300) and 0.15 < verdict.lower_bound < 0.2
    assert "agreement 0.2000, 95% lower bound 0.1587, over 300 rows: below minAgreement 0.95 (300 mirrored calls" in verdict.message, verdict.message


def test_the_shadow_step_passes_on_its_lower_bound_and_waits_for_enough_rows() -> None:
    gates = Gates(min_agreement=0.97, min_requests=10)
    # 200 of 200 agree: the lower bound is 0.981, above 0.97.
    assert judge_shadow(ShadowSample(), shadow_sample(200, 0, 200, 200, [0.004] * 200), gates, SHADOW).outcome is Outcome.PASS
    # 199 rows: too few to judge, however well they agree.
    waiting = judge_shadow(ShadowSample(), shadow_sample(199, 0, 199, 199, [0.004] * 199), gates, SHADOW)
    assert waiting.outcome is Outcome.WAIT and "199 rows compared" in waiting.message
    # 99 % agreement on 200 rows is not enough evidence for 0.97: the lower bound is 0.964.
    assert judge_shadow(ShadowSample(), shadow_sample(200, 0, 200, 198, [0.004] * 200), gates, SHADOW).outcome is Outcome.BREACH
    # Without minAgreement the agreement is reported, not judged.
    free = judge_shadow(ShadowSample(), shadow_sample(200, 0, 200, 10, [0.004] * 200), Gates(min_requests=10), SHADOW)
    assert free.outcome is Outcome.PASS and "agreement 0.0500" in free.message


def test_the_shadow_steps_mirrored_calls_are_gated_on_errors_and_p99_before_any_rows() -> None:
    # Only calls that succeed give rows: errors and p99 are judged on minRequests calls, whatever the rows.
    errors = judge_shadow(ShadowSample(), shadow_sample(200, 20, 180, 180, [0.004] * 180), Gates(), SHADOW)
    assert errors.outcome is Outcome.BREACH and "error rate 10.00% above 1.00% (200 mirrored calls" in errors.message
    failing = judge_shadow(ShadowSample(), shadow_sample(20, 20, 0, 0, []), Gates(), SHADOW)  # every call failed
    assert failing.outcome is Outcome.BREACH and "error rate 100.00% above 1.00% (20 mirrored calls" in failing.message
    slow = judge_shadow(ShadowSample(), shadow_sample(20, 0, 20, 20, [0.2] * 20), Gates(max_p99_latency_ms=50), SHADOW)
    assert slow.outcome is Outcome.BREACH and "above 50 ms" in slow.message
    # Calls that pass wait for minSamples rows before the agreement is judged, and say so.
    waiting = judge_shadow(ShadowSample(), shadow_sample(20, 0, 20, 20, [0.004] * 20), Gates(), SHADOW)
    assert waiting.outcome is Outcome.WAIT
    assert waiting.message.startswith("20 rows compared so far, 200 needed to judge the agreement (20 mirrored calls, error rate 0.00%")


def test_a_shadow_step_without_calls_says_that_its_mirrors_are_shed() -> None:
    quiet = judge_shadow(ShadowSample(), shadow_sample(3, 0, 3, 3, [0.004] * 3), Gates(), SHADOW)
    assert quiet.outcome is Outcome.WAIT and quiet.message == "3 mirrored calls so far, 20 needed to judge"
    shed = judge_shadow(ShadowSample(shed=5), dataclasses.replace(shadow_sample(3, 0, 3, 3, [0.004] * 3), shed=905), Gates(), SHADOW)
    assert shed.outcome is Outcome.WAIT and "900 mirrors shed (quiver_shadow_shed_total" in shed.message, shed.message


def test_a_shadow_sample_survives_the_status_round_trip() -> None:
    original = dataclasses.replace(shadow_sample(10, 1, 30, 29.5, [0.003] * 9), shed=4)
    assert ShadowSample.from_status(original.to_status()) == original


# The reconciler in its Shadow step: the route table it writes, and the verdict it reads from a
# real router's /metrics page (RouterMetrics served on loopback, its counters set as mirrors would).


@pytest.fixture
def router_metrics() -> Iterator[tuple[RouterMetrics, str]]:
    metrics = RouterMetrics()
    server = metrics.serve("127.0.0.1", 0)
    try:
        yield metrics, f"http://127.0.0.1:{server.server_port}/metrics"
    finally:
        server.shutdown()


def shadow_spec() -> Any:
    return parse_spec({
        "model": {"name": "digits", "version": "2", "source": "/in/digits.onnx"},
        "optimization": {"variants": ["fp32"], "evalData": "/in/eval.npz"},
        "rollout": {"steps": [10, 100], "intervalSeconds": 5, "shadow": {"sampleRate": 0.5, "minSamples": 100},
                    "gates": {"minRequests": 10, "minAgreement": 0.9}},
    })


def mirrored(metrics: RouterMetrics, rows: int, agreed: int) -> None:
    labels = ("digits", "2", "fp32", "1")
    metrics.shadow_step_calls.labels(*labels, "ok").inc(rows)
    metrics.shadow_step_rows.labels(*labels).inc(rows)
    metrics.shadow_step_agreed.labels(*labels).inc(agreed)
    for _ in range(rows):
        metrics.shadow_step_latency.labels(*labels).observe(0.003)


@pytest.mark.parametrize("agreed", [100, 40], ids=["agrees", "disagrees"])
def test_the_reconciler_mirrors_judges_and_moves_on_or_rolls_back(
    tmp_path: Path, router_metrics: tuple[RouterMetrics, str], agreed: int
) -> None:
    metrics, url = router_metrics
    manifest = from_onnx_file(build_example(tmp_path / "model.onnx"), name="digits").manifest
    write_version(tmp_path / "store", manifest.model_copy(update={"version": "2"}))
    kube, serve, now = FakeKube(JobState(JobPhase.SUCCEEDED)), FakeServe(), [0.0]
    settings = OperatorSettings("test", tmp_path / "store", "img", "http://ray", router_metrics=(url,))
    reconciler = Reconciler(settings, kube, serve, clock=lambda: now[0])
    status = Status(phase=Phase.SERVING, current_version="1", traffic={"1": 100})
    status = reconciler.look("digits", None, shadow_spec(), status)
    assert status.phase is Phase.SHADOWING and status.traffic_summary == "1:100% 2:shadow"
    assert kube.routes["models"]["digits"] == {"1": 100, "2": 0}
    assert kube.routes["shadow"] == {"digits": {"2": {"of": "1", "sample_rate": 0.5}}}
    TrafficSplit.model_validate(kube.routes)  # what the routers will read

    mirrored(metrics, 100, agreed)
    status = reconciler.look("digits", None, shadow_spec(), status)  # before intervalSeconds: no verdict
    assert status.phase is Phase.SHADOWING and status.shadow is None
    now[0] = 6.0
    status = reconciler.look("digits", None, shadow_spec(), status)
    assert kube.routes["shadow"] == {}  # mirrors end either way
    if agreed == 100:
        assert status.phase is Phase.SHIFTING and kube.routes["models"]["digits"] == {"1": 90, "2": 10}
        assert status.shadow == {"version": "2", "against": "1", "passed": True, "agreement": 1.0,
                                 "lowerBound": wilson_lower(100, 100), "rows": 100}
    else:
        assert status.phase is Phase.FAILED and kube.routes["models"]["digits"] == {"1": 100}
        progressing = status.condition(ConditionType.ROLLOUT_PROGRESSING)
        assert progressing.reason == "ShadowGateBreached"
        assert progressing.message.startswith(
            "version 2 in its Shadow step against version 1: agreement 0.4000, 95% lower bound 0.3094, over 100 rows: "
            "below minAgreement 0.9 (100 mirrored calls, error rate 0.00%, p99"
        ), progressing.message
        assert status.retiring == ["2"]


def test_the_reconciler_waiting_in_its_shadow_step_says_that_mirrors_are_shed(
    tmp_path: Path, router_metrics: tuple[RouterMetrics, str]
) -> None:
    metrics, url = router_metrics
    write_version(tmp_path / "store", from_onnx_file(build_example(tmp_path / "model.onnx"), name="digits", version="2").manifest)
    now = [0.0]
    settings = OperatorSettings("test", tmp_path / "store", "img", "http://ray", router_metrics=(url,))
    reconciler = Reconciler(settings, FakeKube(JobState(JobPhase.SUCCEEDED)), FakeServe(), clock=lambda: now[0])
    status = reconciler.look("digits", None, shadow_spec(), Status(phase=Phase.SERVING, current_version="1", traffic={"1": 100}))
    assert status.phase is Phase.SHADOWING
    metrics.shadow_shed.labels("digits", "2", "", "queue").inc(30)  # as router/shadow.py counts a mirror it cannot queue
    metrics.shadow_shed.labels("digits", "2", "fp32", "load").inc(12)
    metrics.shadow_shed.labels("digits", "1", "fp32", "load").inc(7)  # the serving version's own: not the step's
    now[0] = 6.0
    status = reconciler.look("digits", None, shadow_spec(), status)
    progressing = status.condition(ConditionType.ROLLOUT_PROGRESSING)
    assert status.phase is Phase.SHADOWING and progressing.reason == "WaitingForTraffic"
    assert progressing.message == (
        "Shadow step: 0 mirrored calls so far, 10 needed to judge; 42 mirrors shed (quiver_shadow_shed_total: queue full or loaded)"
    )
