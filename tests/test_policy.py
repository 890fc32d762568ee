"""The routing policy with scripted latencies: budgets, accuracy floors, constraints, spill-over."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from quiver.router.dispatch import Dispatcher
from quiver.router.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable
from quiver.router.hints import RoutingHints
from quiver.router.metrics import RouterMetrics
from quiver.router.policy import Candidate, Decision, NoVariantFits, choose
from quiver.router.prediction import Correction, Factor, Modelled, ProfileLatency
from quiver.router.readiness import Readiness
from quiver.router.routes import RouteTable, VariantRoute
from quiver.router.stats import VariantStats
from quiver.serving import AppState, BatchLatency, Manifest, ModelVersion, Precision, Profile, ServingSettings, Variant, app_name
from quiver.serving.manifest import Batching, Replicas, Threads


def stats(latency_ms: float, in_flight: int = 0, replicas: int = 1, batch: int = 4) -> VariantStats:
    measured = VariantStats(replicas=replicas, batch_size=batch, prior_ms=100.0, clock=lambda: 0.0)
    tickets = [measured.started() for _ in range(in_flight + 1)]
    measured.finished(tickets[0], latency_ms)  # one call returned: the EWMA starts from the scripted latency
    return measured


def variants(**overrides: VariantStats) -> list[Candidate]:
    """fp32 (most accurate, slowest), int8 and a pruned one, on their usual pools."""
    table = [
        ("fp32", Precision.FP32, "gpu", 0.99, stats(20.0)),
        ("int8", Precision.INT8, "cpu", 0.97, stats(8.0)),
        ("pruned", Precision.FP32, "cpu", 0.95, stats(4.0)),
    ]
    return [Candidate(name, precision, pool, accuracy, True, overrides.get(name, measured))
            for name, precision, pool, accuracy, measured in table]


def test_no_hints_route_to_the_default_variant() -> None:
    decision = choose(variants(), "int8", RoutingHints())
    assert (decision.variant, decision.reason) == ("int8", "default")


@pytest.mark.parametrize(("budget", "expected"), [(50, "fp32"), (10, "int8"), (5, "pruned")])
def test_the_most_accurate_variant_that_fits_the_budget(budget: float, expected: str) -> None:
    decision = choose(variants(), "fp32", RoutingHints(latency_budget_ms=budget))
    assert (decision.variant, decision.reason) == (expected, "budget")


def test_with_no_variant_in_budget_the_fastest_is_best_effort() -> None:
    decision = choose(variants(), "fp32", RoutingHints(latency_budget_ms=1))
    assert (decision.variant, decision.reason) == ("pruned", "best-effort")


def test_queued_work_counts_against_the_budget() -> None:
    # int8 has two full rounds of batches queued: 8 ms becomes 24 ms, over a 10 ms budget.
    busy = variants(int8=stats(8.0, in_flight=8, batch=4))
    assert choose(busy, "fp32", RoutingHints(latency_budget_ms=10)).variant == "pruned"


def test_the_accuracy_floor_is_a_hard_constraint() -> None:
    decision = choose(variants(), "pruned", RoutingHints(min_accuracy=0.96, latency_budget_ms=5))
    assert (decision.variant, decision.reason) == ("int8", "best-effort")
    with pytest.raises(NoVariantFits) as error:
        choose(variants(), "fp32", RoutingHints(min_accuracy=0.999))
    assert error.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "quiver.min_accuracy=0.999" in str(error.value)


@pytest.mark.parametrize(
    ("hints", "expected"),
    [
        (RoutingHints(precision=Precision.INT8), "int8"),
        (RoutingHints(pool="cpu"), "int8"),  # the most accurate on the pool
        (RoutingHints(pool="cpu", precision=Precision.FP32), "pruned"),
    ],
)
def test_precision_and_pool_narrow_the_candidates(hints: RoutingHints, expected: str) -> None:
    assert choose(variants(), "fp32", hints).variant == expected


def test_an_impossible_constraint_names_itself() -> None:
    with pytest.raises(NoVariantFits, match="quiver.pool=tpu"):
        choose(variants(), "fp32", RoutingHints(pool="tpu"))
    with pytest.raises(NoVariantFits, match="quiver.precision=fp16"):
        choose(variants(), "fp32", RoutingHints(precision=Precision.FP16))


def test_a_saturated_default_spills_over_to_the_most_accurate_free_variant() -> None:
    saturated = variants(fp32=stats(20.0, in_flight=8, batch=4))  # 2 rounds × 4 queued
    decision = choose(saturated, "fp32", RoutingHints())
    assert (decision.variant, decision.reason) == ("int8", "spill-over")
    # The constraints still hold when spilling: only fp32 is on the gpu pool, so it stays.
    assert choose(saturated, "fp32", RoutingHints(pool="gpu")).variant == "fp32"


def test_variants_not_ready_are_routed_around() -> None:
    pending = [c if c.name != "fp32" else Candidate(c.name, c.precision, c.pool, c.accuracy, False, c.stats) for c in variants()]
    decision = choose(pending, "fp32", RoutingHints())
    assert (decision.variant, decision.reason) == ("int8", "most-accurate")
    with pytest.raises(Unavailable, match="not ready"):
        choose(pending, "fp32", RoutingHints(variant="fp32"))
    with pytest.raises(Unavailable, match="ready"):
        choose(pending, "fp32", RoutingHints(pool="gpu"))


def test_a_pinned_variant_bypasses_the_policy() -> None:
    decision = choose(variants(), "fp32", RoutingHints(variant="pruned", latency_budget_ms=1, min_accuracy=0.99))
    assert (decision.variant, decision.reason) == ("pruned", "pinned")
    with pytest.raises(NotFound):
        choose(variants(), "fp32", RoutingHints(variant="int4"))


def test_a_retry_excludes_the_variant_that_failed() -> None:
    assert choose(variants(), "fp32", RoutingHints(), excluded=frozenset({"fp32"})).variant == "int8"


def test_the_ewma_follows_measured_latencies() -> None:
    measured = VariantStats(prior_ms=100.0, alpha=0.5, clock=lambda: 0.0)
    assert measured.predicted_ms() == 100.0  # the report's figure until something is measured
    for latency in (10.0, 20.0):
        measured.finished(measured.started(), latency)
    assert measured.latency_ms == 15.0
    measured.finished(measured.started(), None)  # a failure says nothing about speed
    assert measured.latency_ms == 15.0 and measured.in_flight == 0


def test_an_estimate_nobody_refreshes_drifts_back_to_the_prior() -> None:
    now = [0.0]
    measured = VariantStats(prior_ms=2.0, alpha=1.0, forget_s=1.0, clock=lambda: now[0])
    measured.finished(measured.started(), 50.0)  # measured slow, under a load that then went elsewhere
    assert measured.latency_ms == 50.0
    now[0] = 1.0
    assert measured.latency_ms == 26.0  # half of the way back to the prior
    now[0] = 10.0
    assert measured.latency_ms < 2.1
    measured.finished(measured.started(), 10.0)  # a new sample counts from where the estimate had drifted to
    assert measured.latency_ms == 10.0


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"quiver.latency_budget_ms": "fast"}, "must be a number"),
        ({"quiver.latency_budget_ms": -1}, "must be a number ≥ 0"),
        ({"quiver.min_accuracy": True}, "must be a number"),
        ({"quiver.precision": "fp64"}, "is not one of"),
        ({"quiver.pool": 3}, "must be a non-empty string"),
    ],
)
def test_malformed_hints_are_invalid_arguments(parameters: dict, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        RoutingHints.from_parameters(parameters)


def test_hints_accept_strings_and_the_deadline_tightens_the_budget() -> None:
    hints = RoutingHints.from_parameters({"quiver.latency_budget_ms": "30", "quiver.min_accuracy": 0.9}, deadline_ms=12.5)
    assert (hints.latency_budget_ms, hints.min_accuracy) == (12.5, 0.9)
    assert RoutingHints.from_parameters({"quiver.latency_budget_ms": 8}, deadline_ms=500).latency_budget_ms == 8
    assert RoutingHints.from_parameters({}, deadline_ms=500).latency_budget_ms is None


def test_a_deadline_alone_keeps_the_default_unless_it_would_miss() -> None:
    # fp32 is the default and predicted at 20 ms: a 500 ms deadline changes nothing ...
    assert choose(variants(), "fp32", RoutingHints(deadline_ms=500)) == Decision("fp32", "default")
    # ... a 10 ms one moves the request to the most accurate variant that makes it.
    assert choose(variants(), "fp32", RoutingHints(deadline_ms=10)) == Decision("int8", "budget")


def test_a_variant_that_failed_is_passed_over_while_it_cools_down() -> None:
    measured = VariantStats(prior_ms=5.0, cooldown_s=5.0)
    measured.finished(measured.started(), None, now=100.0)  # no replica answered at t=100
    assert measured.cooling(now=102.0) and not measured.cooling(now=105.5)
    assert measured.in_flight == 0 and measured.latency_ms == 5.0


def test_the_dispatcher_routes_around_a_failed_variant_until_it_cools_down() -> None:
    manifest = Manifest.model_validate({
        "name": "m", "version": "1", "default_variant": "a",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 1]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}],
        "variants": [{"name": name, "file": "m.onnx", "sha256": "0" * 64} for name in ("a", "b")],
    })
    version = ModelVersion(manifest, Path("."))
    # Handles are never called here: choosing is all this test exercises.
    routes = RouteTable(VariantRoute(version, variant, handle=None) for variant in manifest.variants)
    readiness = Readiness(routes, poll=lambda: {app_name(version, v): AppState("RUNNING", 1) for v in manifest.variants})
    asyncio.run(readiness.refresh())
    now = [0.0]
    dispatcher = Dispatcher(RouterMetrics(), readiness, clock=lambda: now[0])
    target = routes.lookup("m")
    assert dispatcher.choose(target, RoutingHints()).variant == "a"

    failed = dispatcher.stats(target.variants["a"])
    failed.finished(failed.started(), None, now=0.0)
    now[0] = 1.0
    assert dispatcher.choose(target, RoutingHints()) == Decision("b", "most-accurate")
    # Pinned, or with nothing else to try, the cooling variant still serves.
    assert dispatcher.choose(target, RoutingHints(variant="a")).variant == "a"
    assert dispatcher.choose(target, RoutingHints(), excluded=frozenset({"b"})).variant == "a"
    now[0] = 6.0
    assert dispatcher.choose(target, RoutingHints()) == Decision("a", "default")


def _two_variant_dispatcher(queue_limit: int) -> tuple[Dispatcher, object]:
    manifest = Manifest.model_validate({
        "name": "m", "version": "1", "default_variant": "a",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 1]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}],
        "variants": [
            {"name": name, "file": "m.onnx", "sha256": "0" * 64, "replicas": {"max_queued_requests": queue_limit}}
            for name in ("a", "b")
        ],
    })
    version = ModelVersion(manifest, Path("."))
    routes = RouteTable(VariantRoute(version, variant, handle=None) for variant in manifest.variants)
    readiness = Readiness(routes, poll=lambda: {app_name(version, v): AppState("RUNNING", 1) for v in manifest.variants})
    asyncio.run(readiness.refresh())
    return Dispatcher(RouterMetrics(), readiness), routes.lookup("m")


def fill(dispatcher: Dispatcher, target, variant: str, requests: int) -> None:
    for _ in range(requests):
        dispatcher.stats(target.variants[variant]).started()


def test_a_full_queue_spills_over_then_sheds_with_a_retry_hint() -> None:
    dispatcher, target = _two_variant_dispatcher(queue_limit=4)
    fill(dispatcher, target, "a", 4)
    assert dispatcher.admit(target, RoutingHints()) == Decision("b", "spill-over")
    with pytest.raises(ResourceExhausted):  # pinned to the full variant: shed, not moved
        dispatcher.admit(target, RoutingHints(variant="a"))
    fill(dispatcher, target, "b", 4)
    with pytest.raises(ResourceExhausted, match="at its queue limit") as error:
        dispatcher.admit(target, RoutingHints())
    assert error.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.value.retry_after_ms >= 1


def test_low_priority_is_shed_first_and_high_priority_last() -> None:
    dispatcher, target = _two_variant_dispatcher(queue_limit=4)
    fill(dispatcher, target, "a", 2)
    fill(dispatcher, target, "b", 2)  # both half full
    with pytest.raises(ResourceExhausted):
        dispatcher.admit(target, RoutingHints(priority=-1))
    assert dispatcher.admit(target, RoutingHints()).variant == "a"
    fill(dispatcher, target, "a", 3)
    fill(dispatcher, target, "b", 3)  # both past their limit of 4, below 1.5 × 4
    assert dispatcher.admit(target, RoutingHints(priority=1)).variant == "a"
    with pytest.raises(ResourceExhausted):
        dispatcher.admit(target, RoutingHints())


def test_priority_must_be_an_integer() -> None:
    assert RoutingHints.from_parameters({"quiver.priority": "-2"}).priority == -2
    with pytest.raises(InvalidArgument, match="'quiver.priority' must be an integer"):
        RoutingHints.from_parameters({"quiver.priority": "urgent"})


# p50 of one batch through an idle replica, per batch size: what `quiver tune` records.
MEASURED = {1: 2.0, 4: 3.0, 8: 4.0, 16: 6.0}


def tuned_profile(measured: dict[int, float] = MEASURED) -> Profile:
    settings = ServingSettings(intra_op_threads=1, max_batch_size=max(measured))
    return Profile(
        pool="cpu", settings=settings, objective="throughput", concurrency=4, p50_ms=3.0, p99_ms=5.0, throughput=1000.0,
        throughput_per_replica=500.0,
        latency=[BatchLatency(batch_size=size, p50_ms=ms, p99_ms=2 * ms) for size, ms in measured.items()],
    )


def tuned(profile: Profile | None = None) -> Variant:
    """Variant a, served as its profile (by default `tuned_profile()`) measured it."""
    profile = profile or tuned_profile()
    return profile.settings.apply(Variant(name="a", file="m.onnx", sha256="0" * 64, profile=profile))


def test_a_batchs_latency_is_interpolated_between_the_measured_sizes() -> None:
    latency = ProfileLatency.of(tuned())
    assert [latency.batch_ms(rows) for rows in (1, 4, 6, 12, 16)] == [2.0, 3.0, 3.5, 5.0, 6.0]
    assert latency.batch_ms(32) == 10.0  # above the largest: along the last segment
    assert ProfileLatency.of(tuned().model_copy(update={"profile": None})) is None
    assert ProfileLatency.of(tuned(tuned_profile().model_copy(update={"latency": []}))) is None


def test_a_profile_predicts_only_a_variant_that_runs_as_it_was_profiled() -> None:
    variant = tuned()
    assert ProfileLatency.of(variant.model_copy(update={"replicas": Replicas(count=3)})) is not None  # per replica
    for placed in (  # a placement's settings over the tuned ones
        {"threads": Threads(intra_op=4)},
        {"batching": Batching(max_batch_size=16, max_wait_ms=2.0)},
        {"replicas": Replicas(num_cpus=2.0)},
    ):
        assert ProfileLatency.of(variant.model_copy(update=placed)) is None
    # No setting met the SLO: the manifest kept its own settings, and the profile describes others.
    missed = tuned_profile().model_copy(update={"meets_slo": False})
    assert ProfileLatency.of(tuned(missed)) is None


@pytest.mark.parametrize(
    ("ahead", "rows", "out", "own_ms", "wait_ms"),
    [
        ([], 4, 2, 3.0, 0.0),  # idle: its own batch of 4
        ([], 12, 2, 5.0, 0.0),  # a request is one replica's: a batch of 12
        ([4, 4], 1, 2, 2.0, 4.0),  # one call of 8 rows running, then its own
        ([16, 16], 1, 2, 2.0, 6.0),  # a call running on each replica
        ([16, 16, 16, 16, 10], 4, 4, 5.5, 12.0),  # two rounds out, one queued, then it joins the last call: 14 rows
        ([8, 16, 8], 1, 2, 4.25, 6.0),  # 16 rows do not fit after 8: three calls for 32 rows; it joins the third
        ([8, 16, 8], 1, 4, 2.0, 10.0),  # the same with two calls out per replica: the third has left, two rounds ahead
    ],
)
def test_the_profile_predicts_the_call_a_request_joins_and_the_rounds_ahead(
    ahead: list[int], rows: int, out: int, own_ms: float, wait_ms: float
) -> None:
    latency = ProfileLatency.of(tuned())
    calls = latency.calls(ahead)
    assert latency.predict(calls, rows, replicas=2, out=out) == Modelled(pytest.approx(own_ms), pytest.approx(wait_ms))
    assert calls == latency.calls(ahead)  # the calls are the caller's, kept


def test_the_rows_in_flight_decide_whether_a_profiled_variant_fits_the_budget() -> None:
    profiled = VariantStats(replicas=1, batch_size=16, profile=ProfileLatency.of(tuned()), clock=lambda: 0.0)
    candidates = variants(fp32=profiled)
    assert profiled.predicted_ms(rows=16) == 6.0
    assert choose(candidates, "fp32", RoutingHints(latency_budget_ms=5.0)).variant == "fp32"  # one row: 2 ms
    assert choose(candidates, "fp32", RoutingHints(latency_budget_ms=5.0), rows=16).variant == "pruned"  # 16 rows: 6 ms
    out = profiled.started(rows=16)
    assert list(profiled.ahead.values()) == [16] and profiled.predicted_ms() == 8.0  # the running call (6 ms), then its own (2 ms)
    assert choose(candidates, "fp32", RoutingHints(latency_budget_ms=5.0)).variant == "pruned"
    profiled.finished(out, 6.0)
    assert profiled.ahead == {} and profiled.predicted_ms() < 5.0


def test_a_variant_fits_the_budget_by_what_its_predictions_missed_by_lately_not_by_its_median() -> None:
    profiled = VariantStats(profile=ProfileLatency((1,), (10.0,), 1), clock=lambda: 0.0)
    candidates = variants(fp32=profiled)
    budget = RoutingHints(latency_budget_ms=12.0)
    assert choose(candidates, "fp32", budget) == Decision("fp32", "budget")  # 10 ms predicted, nothing observed
    for i in range(100):  # one answer in five takes 25 ms, the rest 9 ms
        profiled.finished(profiled.started(), 25.0 if i % 5 == 0 else 9.0)
    assert profiled.predicted_ms() <= 12.0  # the median still fits
    assert profiled.overruns.factor(1) > 2.0  # one in five missed by more than twice
    assert profiled.overruns.factor(16) == 1.0  # larger requests: none answered yet
    assert choose(candidates, "fp32", budget) == Decision("int8", "budget")  # so does not: int8 is 8 ms with no misses


def serve_scripted(candidates: list[Candidate], answers_ms: dict[str, float], now: list[float], step_s: float,
                   requests: int) -> list[Decision]:
    """`requests` budget decisions `step_s` apart, each answered in its variant's scripted time."""
    decisions = []
    for _ in range(requests):
        now[0] += step_s
        decision = choose(candidates, "int8", RoutingHints(latency_budget_ms=10.0))
        measured = next(c.stats for c in candidates if c.name == decision.variant)
        measured.finished(measured.started(), answers_ms[decision.variant])
        decisions.append(decision)
    return decisions


def test_a_variant_the_budget_passes_over_is_explored_and_chosen_once_its_answers_correct_it() -> None:
    now = [0.0]
    # fp32's profile (measured on a busy node) predicts 30 ms, over the 10 ms budget; it answers in 5.
    fp32 = VariantStats(profile=ProfileLatency((1,), (30.0,), 1), clock=lambda: now[0])
    candidates = variants(fp32=fp32, int8=VariantStats(prior_ms=8.0, clock=lambda: now[0]))
    decisions = serve_scripted(candidates, {"fp32": 5.0, "int8": 8.0}, now, 0.02, 1_000)
    assert set(decisions[:49]) == {Decision("int8", "budget")}  # passed over 49 times: not yet due
    explored = [i for i, d in enumerate(decisions) if d.reason == "explore"]
    assert explored and {decisions[i].variant for i in explored} == {"fp32"}  # pruned, less accurate, cannot win
    assert all(later - earlier >= 50 for earlier, later in zip(explored, explored[1:]))
    chosen = decisions.index(Decision("fp32", "budget"))  # its answers corrected the profile's 30 ms
    assert chosen > explored[0] and set(decisions[chosen:]) == {Decision("fp32", "budget")}


def test_exploring_costs_at_most_two_requests_a_second_per_variant() -> None:
    now = [0.0]
    fp32 = VariantStats(profile=ProfileLatency((1,), (30.0,), 1), clock=lambda: now[0])  # right: it is slow
    candidates = variants(fp32=fp32, int8=VariantStats(prior_ms=8.0, clock=lambda: now[0]))
    decisions = serve_scripted(candidates, {"fp32": 30.0, "int8": 8.0}, now, 0.001, 3_000)  # 3 s at 1,000/s
    assert 1 <= sum(d.reason == "explore" for d in decisions) <= 6
    assert Decision("fp32", "budget") not in decisions


def test_the_correction_converges_to_what_is_observed_and_fades_unrefreshed() -> None:
    now = [0.0]
    profiled = VariantStats(profile=ProfileLatency.of(tuned()),
                            correction=Correction(Factor(alpha=0.2, forget_s=10.0), Factor(alpha=0.2, forget_s=10.0)),
                            clock=lambda: now[0])

    def observe(observed: Callable[[Modelled], float], aheads: list[list[int]], calls: int) -> None:
        for call in range(calls):
            others = [profiled.started(rows) for rows in aheads[call % len(aheads)]]  # in flight before it
            ticket = profiled.started(rows=4)
            profiled.finished(ticket, observed(ticket.modelled))
            for other in others:
                profiled.finished(other, None)

    def predicted(ahead: list[int]) -> float:
        others = [profiled.started(rows) for rows in ahead]
        ms = profiled.predicted_ms(rows=4)
        for other in others:
            profiled.finished(other, None)
        return ms

    # This machine runs a batch 1.5 times slower than the profile's, and overlaps a round ahead
    # with the next one so that it costs 0.4 of the profile's figure.
    slower = lambda modelled: 1.5 * modelled.own_ms + 0.4 * modelled.wait_ms  # noqa: E731
    observe(slower, [[]], calls=40)  # nothing in flight: its own batch alone
    assert predicted([]) == pytest.approx(1.5 * 3.0, rel=1e-3)
    # Then one request in two queued: two calls of 16 ahead (6 ms each), then it joins the third,
    # 8 + 4 rows (5 ms). The queued ones alone would not tell the two factors apart.
    observe(slower, [[16, 16, 8], []], calls=400)
    assert predicted([16, 16, 8]) == pytest.approx(1.5 * 5.0 + 0.4 * 12.0, rel=1e-2)
    assert predicted([]) == pytest.approx(1.5 * 3.0, rel=1e-2)
    now[0] += 10.0
    assert predicted([]) == pytest.approx(1.5**0.5 * 3.0, rel=1e-2)  # half of the log-ratio forgotten
    ticket = profiled.started()
    profiled.finished(ticket, None, now=now[0])  # a failure says nothing about speed
    assert profiled.in_flight == 0 and profiled.ahead == {}
    assert predicted([]) == pytest.approx(1.5**0.5 * 3.0, rel=1e-2)


def test_under_a_steady_load_the_own_batch_is_learned_from_queued_requests() -> None:
    # No request ever finds the replica idle, and its batches take 3 times the profile's: the own
    # factor learns it from requests of other sizes behind other queues (it stayed at 1 when only
    # requests that found nothing in flight taught it).
    profiled = VariantStats(profile=ProfileLatency.of(tuned()), clock=lambda: 0.0)
    for call in range(2_000):
        others = [profiled.started(rows) for rows in ([16, 16], [16, 16, 16, 16])[call % 2]]
        ticket = profiled.started(rows=(1, 12, 4)[call % 3])
        profiled.finished(ticket, 3.0 * ticket.modelled.own_ms + 1.0 * ticket.modelled.wait_ms)
        for other in others:
            profiled.finished(other, None)
    assert profiled.correction.own.value(0.0) == pytest.approx(3.0, rel=0.05)
    assert profiled.correction.wait.value(0.0) == pytest.approx(1.0, rel=0.05)


def test_without_a_profile_the_request_rows_do_not_change_the_prediction() -> None:
    measured = stats(10.0, in_flight=5, batch=4)  # 5 requests in flight: one full round of 4 ahead
    assert measured.profile is None
    assert measured.predicted_ms() == measured.predicted_ms(rows=64) == 20.0


def _measured(accuracy: float, p50_ms: float) -> dict:
    return {"metric": "top1", "accuracy": accuracy, "accuracy_drop": 0.99 - accuracy, "p50_ms": p50_ms,
            "p99_ms": p50_ms, "throughput": 1000 / p50_ms, "throughput_batch": 1, "max_abs_error": 0.0}


def _profiled_dispatcher(profile: Profile | None, running: dict[str, int] | None = None) -> tuple[Dispatcher, object]:
    """Variant a (the most accurate, default) carries `profile`; b is measured at 3 ms by `quiver optimize`.
    Serve's status says `running[name]` replicas of each run (1 if unnamed), re-read on each refresh."""
    manifest = Manifest.model_validate({
        "name": "m", "version": "1", "default_variant": "a",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 1]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}],
        "variants": [
            {"name": "a", "file": "m.onnx", "sha256": "0" * 64, "batching": {"max_batch_size": 16}, "profile": profile,
             "threads": {"intra_op": 1}, "metrics": _measured(0.99, 2.0)},
            {"name": "b", "file": "m.onnx", "sha256": "0" * 64, "metrics": _measured(0.9, 3.0)},
        ],
    })
    version = ModelVersion(manifest, Path("."))
    routes = RouteTable(VariantRoute(version, variant, handle=None) for variant in manifest.variants)
    running = running if running is not None else {}
    readiness = Readiness(routes, poll=lambda: {app_name(version, v): AppState("RUNNING", running.get(v.name, 1)) for v in manifest.variants})
    asyncio.run(readiness.refresh())
    return Dispatcher(RouterMetrics(), readiness), routes.lookup("m")


def test_the_prediction_counts_the_replicas_that_run_not_those_the_route_table_asks_for() -> None:
    running = {"a": 1}
    dispatcher, target = _profiled_dispatcher(tuned_profile().model_dump(), running)
    route = target.variants["a"]
    autoscaled = VariantRoute(route.version, route.variant.model_copy(update={"replicas": Replicas(count=2)}), handle=None)
    assert dispatcher.stats(autoscaled).replicas == 1  # asked for 2, one runs yet
    running["a"] = 4  # the autoscaler added replicas since the route table was written
    asyncio.run(dispatcher._readiness.refresh())
    assert dispatcher.stats(autoscaled).replicas == 4
    running["a"] = 0  # none running (scaled to zero): as many as asked for, until they do
    asyncio.run(dispatcher._readiness.refresh())
    assert dispatcher.stats(autoscaled).replicas == 2


def test_the_dispatcher_predicts_a_variant_from_its_manifests_profile() -> None:
    dispatcher, target = _profiled_dispatcher(tuned_profile().model_dump())
    assert dispatcher.stats(target.variants["a"]).profile == ProfileLatency.of(tuned())
    assert dispatcher.stats(target.variants["b"]).profile is None
    budget = RoutingHints(latency_budget_ms=5.0)
    # a's profile: 2 ms for one row, 6 ms for 16: the request's rows decide.
    assert dispatcher.admit(target, budget, rows=1) == Decision("a", "budget")
    assert dispatcher.admit(target, budget, rows=16) == Decision("b", "budget")
    # Without the profile, a's prediction is its measured p50 whatever the rows.
    dispatcher, target = _profiled_dispatcher(None)
    assert dispatcher.admit(target, budget, rows=16) == Decision("a", "budget")


def test_a_new_route_table_updates_a_variants_settings_and_keeps_what_was_measured() -> None:
    dispatcher, target = _profiled_dispatcher(tuned_profile().model_dump(), running={"a": 3})
    route = target.variants["a"]
    stats = dispatcher.stats(route)
    ticket = stats.started()
    stats.finished(ticket, 9.0)
    running = stats.started()
    # Placed anew: three replicas, and threads other than the profiled ones.
    placed = route.variant.model_copy(update={"replicas": Replicas(count=3), "threads": Threads(intra_op=4)})
    assert dispatcher.stats(VariantRoute(route.version, placed, handle=None)) is stats
    assert (stats.replicas, stats.queue_limit, stats.profile) == (3, 3 * 256, None)  # three run
    assert stats.ewma_ms == 9.0 and stats.in_flight == 1
    stats.finished(running, None)
    assert stats.in_flight == 0 and stats.ahead == {}
