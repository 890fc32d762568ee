"""The ModelDeployment schema, twice: the CRD's openAPIV3Schema (what the API server enforces)
and the operator's typed spec (what it acts on). Both accept the examples; broken specs are
refused by whichever can see the problem, with a message that names the field."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

from quiver.operator import OperatorSettings, SpecError, parse_spec
from quiver.operator.jobs import job_name, optimize_command
from quiver.operator.spec import VariantPlacement
from quiver.serving.manifest import Autoscaling, Batching, Replicas, Threads, Variant

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("modeldeployment*.yaml"))
DIGITS = ROOT / "examples/modeldeployment.yaml"
CRD = yaml.safe_load((ROOT / "helm/quiver/crds/modeldeployment.yaml").read_text())
SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def schema_errors(body: dict) -> list[str]:
    # Kubernetes' structural schemas are OpenAPI 3.0: draft 4 semantics (boolean exclusiveMinimum).
    validator = jsonschema.Draft4Validator(SCHEMA)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(body)]


def test_there_are_three_examples() -> None:
    assert len(EXAMPLES) == 3


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_pass_the_crd_schema_and_the_operator(path: Path) -> None:
    body = yaml.safe_load(path.read_text())
    assert schema_errors(body) == []
    spec = parse_spec(body["spec"])
    assert spec.rollout.weights[-1] == 100


BROKEN = [
    # (change, where the schema's message points, words in it)
    (lambda s: s["model"].pop("version"), "spec.model", "'version' is a required property"),
    (lambda s: s["model"].update(name="Digits_2"), "spec.model.name", "does not match"),
    (lambda s: s["model"].update(source="s3://bucket/model.onnx"), "spec.model.source", "does not match"),
    (lambda s: s["optimization"].update(variants=["int4"]), "spec.optimization.variants.0", "is not one of"),
    (lambda s: s["optimization"].update(gate="p50"), "spec.optimization.gate", "is not one of"),
    (lambda s: s["placement"][0].update(minReplicas=-1), "spec.placement.0.minReplicas", "less than the minimum"),
    (lambda s: s["rollout"].update(strategy="BlueGreen"), "spec.rollout.strategy", "is not one of"),
    (lambda s: s["rollout"]["gates"].update(maxErrorRate=2), "spec.rollout.gates.maxErrorRate", "greater than the maximum"),
    (lambda s: s["rollout"]["gates"].update(minAgreement=1.5), "spec.rollout.gates.minAgreement", "greater than the maximum"),
    (lambda s: s["rollout"]["shadow"].update(sampleRate=-0.1), "spec.rollout.shadow.sampleRate", "less than"),
    (lambda s: s["rollout"]["shadow"].update(sampleRate=0), "spec.rollout.shadow.sampleRate", "less than or equal to the minimum"),
    (lambda s: s["capture"].update(rate=1.01), "spec.capture.rate", "greater than the maximum"),
    (lambda s: s["capture"].update(maxMB=0), "spec.capture.maxMB", "less than or equal to the minimum"),
    (lambda s: s.update(tuning={"objective": "cost"}), "spec.tuning.objective", "is not one of"),
    (lambda s: s.update(tuning={"budgetSeconds": 1}), "spec.tuning.budgetSeconds", "less than the minimum"),
]


@pytest.mark.parametrize(("change", "where", "words"), BROKEN, ids=[b[1] for b in BROKEN])
def test_the_crd_schema_refuses_broken_specs_naming_the_field(change, where, words) -> None:  # noqa: ANN001
    body = yaml.safe_load(DIGITS.read_text())
    change(body["spec"])
    errors = schema_errors(body)
    assert any(e.startswith(where + ":") and words in e for e in errors), errors
    with pytest.raises(SpecError):
        parse_spec(body["spec"])


CROSS_FIELD = [
    # What a schema cannot say, the operator does: each names the fields involved.
    (lambda s: s["rollout"].update(steps=[50, 20]), "spec.rollout: Value error, steps [50, 20] must rise and end at 100"),
    (lambda s: s["placement"][0].update(minReplicas=9, maxReplicas=2), "spec.placement[0]: Value error, minReplicas (9) is above maxReplicas (2)"),
    (lambda s: s["placement"][0].update(variant="distilled"), "placement[0].variant 'distilled' is not one of optimization.variants"),
    (lambda s: s["routing"].update(defaultVariant="fp16"), "routing.defaultVariant 'fp16' is not one of optimization.variants"),
    (lambda s: s["optimization"].pop("calibrationData"), "int8-static, which needs calibrationData"),
    (lambda s: s["placement"].append(copy.deepcopy(s["placement"][0])), "placement: each variant at most once"),
    (lambda s: s["rollout"].pop("shadow"), "spec.rollout: Value error, gates.minAgreement is judged in the Shadow step: it needs rollout.shadow"),
    (lambda s: s.update(tuning={"variants": ["distilled"]}), "tuning.variants 'distilled' is not one of optimization.variants"),
]


@pytest.mark.parametrize(("change", "message"), CROSS_FIELD, ids=[m[:40] for _, m in CROSS_FIELD])
def test_the_operator_refuses_what_the_schema_cannot_see(change, message) -> None:  # noqa: ANN001
    body = yaml.safe_load(DIGITS.read_text())
    change(body["spec"])
    assert schema_errors(body) == []
    with pytest.raises(SpecError, match=".*") as refused:
        parse_spec(body["spec"])
    assert message in str(refused.value)


@pytest.mark.parametrize(
    ("section", "field", "value"),
    [("rollout.shadow", "sampleRate", 1.5), ("rollout.gates", "minAgreement", -0.2), ("capture", "rate", 2.0)],
)
def test_rates_outside_0_1_are_refused_by_the_operator_naming_the_field(section: str, field: str, value: float) -> None:
    """Where an old CRD or an emulator lets them through, the typed spec still refuses them."""
    body = yaml.safe_load(DIGITS.read_text())
    parent = body["spec"]
    for key in section.split("."):
        parent = parent[key]
    parent[field] = value
    with pytest.raises(SpecError, match=f"spec.{section}.{field}: Input should be"):
        parse_spec(body["spec"])


def variant(name: str, **fields: object) -> Variant:
    return Variant(name=name, file=f"{name}.onnx", sha256="0" * 64, **fields)


def test_a_placement_becomes_serve_replicas_and_autoscaling() -> None:
    spec = parse_spec(yaml.safe_load(DIGITS.read_text())["spec"])
    placed = spec.placement_of("int8-static").serve_placement(variant("int8-static"))
    assert placed.pool == "cpu" and placed.replicas.count == 2
    assert placed.replicas.autoscaling.min_replicas == 2 and placed.replicas.autoscaling.max_replicas == 8
    assert placed.batching.max_wait_ms == 2
    fixed = spec.placement_of("fp32").serve_placement(variant("fp32"))
    assert fixed.replicas.autoscaling.max_replicas == 2


TUNED = variant(
    "fp32", batching=Batching(max_batch_size=16, max_wait_ms=1.0), threads=Threads(intra_op=2, inter_op=1),
    replicas=Replicas(count=2, num_cpus=2.0, max_queued_requests=64),
)


def test_a_placement_without_serving_settings_keeps_what_quiver_tune_recorded() -> None:
    placed = VariantPlacement.model_validate({"variant": "fp32", "pool": "big"}).serve_placement(TUNED)
    assert placed.pool == "big"
    assert (placed.batching.max_batch_size, placed.batching.max_wait_ms) == (16, 1.0)
    assert (placed.threads.intra_op, placed.threads.inter_op) == (2, 1)
    assert (placed.replicas.count, placed.replicas.num_cpus, placed.replicas.max_queued_requests) == (2, 2.0, 64)
    assert placed.replicas.autoscaling is None
    untuned = VariantPlacement.model_validate({"variant": "fp32", "pool": "cpu"}).serve_placement(variant("fp32"))
    assert (untuned.batching.max_batch_size, untuned.replicas.count, untuned.replicas.num_cpus) == (64, 1, 1.0)


def test_what_a_placement_sets_overrides_the_tuned_value_and_nothing_else() -> None:
    body = {"variant": "fp32", "pool": "cpu", "batching": {"maxWaitMs": 0}, "intraOpThreads": 4, "maxReplicas": 6}
    placed = VariantPlacement.model_validate(body).serve_placement(TUNED)
    assert (placed.batching.max_batch_size, placed.batching.max_wait_ms) == (16, 0.0)
    assert (placed.threads.intra_op, placed.replicas.num_cpus) == (4, 2.0)
    # A bound given alone: the tuned count is where the replicas start and the lower bound.
    assert placed.replicas.count == 2
    assert (placed.replicas.autoscaling.min_replicas, placed.replicas.autoscaling.max_replicas) == (2, 6)
    lower = VariantPlacement.model_validate({"variant": "fp32", "pool": "cpu", "minReplicas": 3}).serve_placement(TUNED)
    assert (lower.replicas.count, lower.replicas.autoscaling) == (3, None)
    # minReplicas alone above the manifest's autoscaling max: the user's floor stands.
    scaled = variant("fp32", replicas=Replicas(count=1, autoscaling=Autoscaling(min_replicas=1, max_replicas=2)))
    raised = VariantPlacement.model_validate({"variant": "fp32", "pool": "cpu", "minReplicas": 4}).serve_placement(scaled)
    assert (raised.replicas.count, raised.replicas.autoscaling) == (4, None)


def test_job_names_of_a_long_deployment_stay_apart_and_valid() -> None:
    deployment = "d" * 60
    names = {job_name(deployment, "1"), job_name(deployment, "1", "tune"), job_name(deployment, "2")}
    assert len(names) == 3 and all(len(name) <= 63 and not name.endswith("-") for name in names)
    assert job_name("digits", "1.0", "tune") == "digits-tune-1-0"


def test_the_crd_defaults_no_serving_setting_so_the_tuned_ones_stand() -> None:
    """An API server fills in a schema's defaults: any default here would override quiver tune's value."""
    items = SCHEMA["properties"]["spec"]["properties"]["placement"]["items"]["properties"]
    settings = {**items, **items["batching"]["properties"]}
    assert {"intraOpThreads", "interOpThreads", "maxBatchSize", "numCpus"} <= set(settings)
    assert [name for name, field in settings.items() if "default" in field] == []


@pytest.mark.parametrize("gate", [None, "p5"])
def test_the_gate_reaches_the_optimization_job(gate: str | None) -> None:
    body = yaml.safe_load(DIGITS.read_text())
    if gate:
        body["spec"]["optimization"]["gate"] = gate
    assert schema_errors(body) == []
    settings = OperatorSettings(namespace="quiver", store=Path("/store"), image="quiver:test", ray_dashboard="http://ray:8265")
    command = optimize_command(parse_spec(body["spec"]), settings)
    assert command[command.index("--gate") + 1] == (gate or "mean")
