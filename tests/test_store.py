"""The model store and manifest: validated at the edge, errors that name the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from quiver.serving import Datatype, Manifest, StoreError, TensorSpec, build_example, from_onnx_file, load_store

from .models import build_pair, write_store

SHA = "0" * 64


def manifest(**changes: object) -> dict:
    document = {
        "name": "m",
        "version": "1",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
        "variants": [{"name": "fp32", "file": "model.onnx", "sha256": SHA}],
    }
    return document | changes


def test_a_valid_manifest_gets_its_defaults() -> None:
    parsed = Manifest.model_validate(manifest())
    variant = parsed.default
    assert (variant.name, variant.precision.value, variant.pool, variant.device.value) == ("fp32", "fp32", "cpu", "cpu")
    assert variant.batching.max_batch_size == 64 and variant.replicas.max_ongoing_requests >= 64
    assert parsed.batchable


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"inputs": [{"name": "x", "datatype": "FLOAT", "shape": [1]}]}, "inputs.0.datatype"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-2]}]}, "inputs.0.shape.0"),
        ({"variants": [{"name": "fp32", "file": "model.onnx", "sha256": "abc"}]}, "variants.0.sha256"),
        ({"variants": [{"name": "fp32", "file": "../secret.onnx", "sha256": SHA}]}, "inside the version directory"),
        ({"variants": [{"name": "fp32", "file": "m.onnx", "sha256": SHA, "pool": "cpu", "replica": 2}]}, "variants.0.replica"),
        ({"variants": [{"name": "a", "file": "m", "sha256": SHA}, {"name": "a", "file": "n", "sha256": SHA}]}, "names must be unique"),
        ({"default_variant": "int8"}, "default_variant 'int8' is not one of variants ['fp32']"),
        ({"version": "1/../2"}, "version"),
        ({"variants": []}, "variants"),
        (
            {"variants": [{"name": "a", "file": "m", "sha256": SHA, "replicas": {"autoscaling": {"min_replicas": 3, "max_replicas": 2}}}]},
            "min_replicas (3) is above max_replicas (2)",
        ),
        (
            {"variants": [{"name": "a", "file": "m", "sha256": SHA, "replicas": {"count": 5, "autoscaling": {"max_replicas": 4}}}]},
            "count (5) must lie within autoscaling.min_replicas (1) and autoscaling.max_replicas (4)",
        ),
    ],
)
def test_invalid_manifests_are_refused_naming_the_field(changes: dict, message: str) -> None:
    with pytest.raises(ValidationError) as error:
        Manifest.model_validate(manifest(**changes))
    assert message in str(error.value)


def test_metrics_with_and_without_the_tail_round_trip() -> None:
    before_the_tail = {"metric": "cosine", "accuracy": 0.9923, "accuracy_drop": 0.0077, "max_abs_error": 0.05,
                       "p50_ms": 1.0, "p99_ms": 2.0, "throughput": 900.0, "throughput_batch": 64}
    tail = {"tail_unit": "example", "accuracy_p5": 0.9887, "accuracy_min": 0.9883, "accuracy_drop_p5": 0.0113,
            "accuracy_drop_min": 0.0117, "gate": "p5"}
    for metrics in (before_the_tail, before_the_tail | tail):
        document = manifest(variants=[{"name": "int8", "file": "m.onnx", "sha256": SHA, "metrics": metrics}])
        parsed = Manifest.model_validate(document)
        assert Manifest.model_validate_json(parsed.model_dump_json(exclude_none=True)) == parsed
        assert parsed.default.metrics.model_dump(exclude_none=True) == metrics
    assert parsed.default.metrics.drop("p5") == 0.0113 and parsed.default.metrics.drop("mean") == 0.0077
    with pytest.raises(ValidationError, match="metrics.gate"):
        Manifest.model_validate(manifest(variants=[{"name": "int8", "file": "m.onnx", "sha256": SHA,
                                                    "metrics": before_the_tail | {"gate": "p50"}}]))


def test_a_fixed_first_dimension_turns_batching_off() -> None:
    parsed = Manifest.model_validate(manifest(outputs=[{"name": "y", "datatype": "FP32", "shape": [1, 2]}]))
    assert not parsed.batchable


def test_a_plain_onnx_file_becomes_a_one_variant_model(tmp_path: Path) -> None:
    version = from_onnx_file(build_pair(tmp_path / "pair.onnx"), name="renamed")
    manifest = version.manifest
    assert (manifest.name, manifest.version, manifest.variant_names) == ("renamed", "1", ["fp32"])
    assert manifest.inputs == [
        TensorSpec(name="x", datatype=Datatype.FP32, shape=[-1, 3]),
        TensorSpec(name="k", datatype=Datatype.INT64, shape=[-1, 2]),
    ]
    assert [(o.name, o.datatype) for o in manifest.outputs] == [("total", Datatype.FP32), ("looked_up", Datatype.INT64)]
    assert from_onnx_file(build_example(tmp_path / "example.onnx")).manifest.name == "example"


def test_the_example_model_is_the_same_bytes_every_time(tmp_path: Path) -> None:
    first = build_example(tmp_path / "a.onnx").read_bytes()
    assert build_example(tmp_path / "b.onnx").read_bytes() == first


def test_a_store_lists_every_model_version(tmp_path: Path) -> None:
    versions = load_store(write_store(tmp_path))
    assert [version.key for version in versions] == ["example:1", "pair:1", "pair:2", "tuned:1"]
    assert all(version.path(version.manifest.default).is_file() for version in versions)


def test_a_store_refuses_a_manifest_in_the_wrong_directory(tmp_path: Path) -> None:
    write_store(tmp_path)
    (tmp_path / "pair/1").rename(tmp_path / "pair/7")
    with pytest.raises(StoreError, match="manifest says pair:1, its directory says pair:7"):
        load_store(tmp_path)


def test_a_broken_manifest_names_its_file_and_field(tmp_path: Path) -> None:
    write_store(tmp_path)
    path = tmp_path / "example/1/manifest.json"
    document = json.loads(path.read_text())
    document["inputs"][0]["datatype"] = "float"
    path.write_text(json.dumps(document))
    with pytest.raises(StoreError, match=r"example/1/manifest.json is not a valid manifest(.|\n)*inputs.0.datatype"):
        load_store(tmp_path)


def test_an_empty_or_missing_store_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="holds no"):
        load_store(tmp_path)
    with pytest.raises(StoreError, match="not a directory"):
        load_store(tmp_path / "missing")
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(StoreError, match="cannot read ONNX model"):
        from_onnx_file(tmp_path / "bad.onnx")
