"""quiver optimize: every variant kind is built and measured, the gate refuses what breaks
accuracy (in the mean or in the tail), the quantization scheme is the linear one, and bad
requests leave the store as it was."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from quiver.cli import main
from quiver.serving import StoreError, build_example, read_version
from quiver.serving.optimize import (
    Calibration,
    DatasetError,
    Metric,
    OptimizeError,
    OptimizeSettings,
    SpeedBudget,
    StaticQuantization,
    Statistic,
    VariantKind,
    default_variants,
    optimize,
)
from quiver.serving.optimize.accuracy import scores
from quiver.serving.optimize.datasets import load_dataset
from quiver.serving.optimize.quantize import quantize_int8_static
from quiver.serving.store import from_onnx_file, sha256_file

from .models import build_cnn, build_gemm

FAST = SpeedBudget(seconds=0.05, max_runs=50, throughput_batch=8)
ALL = tuple(VariantKind)


def example_data(tmp_path: Path, rows: int = 300) -> tuple[Path, Path, Path]:
    model = build_example(tmp_path / "example.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "eval.npz", input=rng.standard_normal((rows, 64)).astype(np.float32))
    np.savez(tmp_path / "calib.npz", input=rng.standard_normal((128, 64)).astype(np.float32))
    return model, tmp_path / "eval.npz", tmp_path / "calib.npz"


def settings(tmp_path: Path, **changes: object) -> OptimizeSettings:
    model, eval_set, calibration = example_data(tmp_path)
    base = dict(model=model, name="example", version="2", store=tmp_path / "store", eval=eval_set,
                calibration=calibration, variants=ALL, max_accuracy_drop=0.05, speed=FAST)
    return OptimizeSettings(**(base | changes))


def store_listing(store: Path) -> list[str]:
    return sorted(str(path.relative_to(store)) for path in store.rglob("*")) if store.exists() else []


def test_every_variant_kind_is_built_measured_and_published(tmp_path: Path) -> None:
    result = optimize(settings(tmp_path))
    version = read_version(tmp_path / "store/example/2")
    assert version.manifest == result.manifest
    assert version.manifest.variant_names == ["fp32", "fp16", "int8-dynamic", "int8-static"]
    assert version.manifest.default_variant == "fp32"

    eval_x = np.load(tmp_path / "eval.npz")["input"]
    reference = ort.InferenceSession(str(tmp_path / "example.onnx")).run(None, {"input": eval_x})[0]
    tolerance = {"fp32": 1e-5, "fp16": 2e-2, "int8-dynamic": 0.5, "int8-static": 0.5}
    for variant in version.manifest.variants:
        path = version.path(variant)
        assert sha256_file(path) == variant.sha256
        outputs = ort.InferenceSession(str(path)).run(None, {"input": eval_x})[0]
        assert outputs.dtype == np.float32  # fp16 keeps fp32 inputs and outputs
        assert np.abs(outputs - reference).max() <= tolerance[variant.name], variant.name
        # Dynamic int8 ranges depend on each batch's rows, so the measured error is checked by bound.
        assert variant.metrics.max_abs_error <= tolerance[variant.name]
        assert variant.metrics.metric == "top1-agreement" and variant.metrics.accuracy >= 0.95
        assert variant.metrics.p50_ms > 0 and variant.metrics.throughput > 0
    assert {(v.name, v.precision.value, v.pool) for v in version.manifest.variants} == {
        ("fp32", "fp32", "cpu"), ("fp16", "fp16", "gpu"), ("int8-dynamic", "int8", "cpu"), ("int8-static", "int8", "cpu")
    }
    report = json.loads((tmp_path / "store/example/2/report.json").read_text())
    assert [v["variant"] for v in report["variants"] if v["published"]] == version.manifest.variant_names
    page = (tmp_path / "store/example/2/report.html").read_text()
    assert "data:image/png;base64," in page
    assert (tmp_path / "store/example/2/accuracy_latency.png").read_bytes()[:4] == b"\x89PNG"
    assert store_listing(tmp_path / "store")[0] == "example"  # no scratch directory left behind


def test_with_labels_accuracy_is_top1_against_them(tmp_path: Path) -> None:
    model, _, _ = example_data(tmp_path)
    x = np.random.default_rng(1).standard_normal((200, 64)).astype(np.float32)
    labels = ort.InferenceSession(str(model)).run(None, {"input": x})[0].argmax(1)
    labels[:50] = (labels[:50] + 1) % 10  # a quarter of the labels disagree with the model
    np.savez(tmp_path / "labelled.npz", input=x, labels=labels)
    result = optimize(settings(tmp_path, eval=tmp_path / "labelled.npz", variants=(VariantKind.FP32,)))
    metrics = result.manifest.default.metrics
    assert (metrics.metric, metrics.accuracy, result.reference_score) == ("top1", 0.75, 0.75)


def test_the_gate_refuses_a_variant_that_breaks_accuracy(tmp_path: Path) -> None:
    # Feature 0 has no weight but a range of ±1000: per-tensor int8 activations then round
    # every other feature to zero, and the predictions collapse.
    rng = np.random.default_rng(2)
    weights = rng.standard_normal((8, 4)).astype(np.float32)
    weights[0] = 0
    model = build_gemm(tmp_path / "gemm.onnx", weights)
    x = rng.standard_normal((400, 8)).astype(np.float32)
    x[:, 0] = rng.choice([-1000.0, 1000.0], size=400)
    np.savez(tmp_path / "data.npz", x=x)
    result = optimize(OptimizeSettings(
        model=model, name="gemm", version="1", store=tmp_path / "store", eval=tmp_path / "data.npz",
        calibration=tmp_path / "data.npz", variants=(VariantKind.FP32, VariantKind.INT8_STATIC),
        max_accuracy_drop=0.01, speed=FAST,
    ))
    refused = {o.kind: o for o in result.outcomes}[VariantKind.INT8_STATIC]
    assert not refused.published and refused.metrics.accuracy_drop > 0.3
    assert refused.reason.startswith(f"mean drop {refused.metrics.accuracy_drop:.4f} > 0.01")
    assert result.manifest.variant_names == ["fp32"]
    assert not (tmp_path / "store/gemm/1/int8-static.onnx").exists()


@pytest.mark.parametrize("gate", list(Statistic))
def test_a_tail_gate_refuses_what_the_mean_would_publish(tmp_path: Path, gate: Statistic) -> None:
    # 12 of 200 eval rows lie 30× outside the calibration set's range: static int8 clips them, so
    # their cosine to fp32 falls (the kind of input an eval set lacked) while the mean barely moves.
    rng = np.random.default_rng(7)
    model = build_gemm(tmp_path / "gemm.onnx", rng.standard_normal((16, 8)).astype(np.float32))
    np.savez(tmp_path / "calibration.npz", x=rng.standard_normal((200, 16)).astype(np.float32))
    x = rng.standard_normal((200, 16)).astype(np.float32)
    x[:12] *= 30
    np.savez(tmp_path / "eval.npz", x=x)
    store = tmp_path / "store"
    assert main([
        "optimize", str(model), "--name", "gemm", "--version", "1", "--store", str(store), "--eval", str(tmp_path / "eval.npz"),
        "--calibration", str(tmp_path / "calibration.npz"), "--variants", "fp32,int8-static", "--metric", "cosine",
        "--max-accuracy-drop", "0.02", "--gate", gate.value, "--bench-seconds", "0.05",
    ]) == 0
    report = json.loads((store / "gemm/1/report.json").read_text())
    assert (report["gate"], report["tail_unit"], report["reference_min"]) == (gate.value, "example", pytest.approx(1.0))
    int8 = {v["variant"]: v for v in report["variants"]}["int8-static"]
    metrics = int8["metrics"]
    assert metrics["accuracy_drop"] < 0.02 < metrics["accuracy_drop_p5"] < metrics["accuracy_drop_min"]
    assert metrics["accuracy_min"] < metrics["accuracy_p5"] < metrics["accuracy"]
    # fp32 scores 1 on every example, so a tail drop is 1 - the variant's statistic.
    assert metrics["accuracy_drop_p5"] == pytest.approx(1 - metrics["accuracy_p5"])
    published = read_version(store / "gemm/1").manifest
    if gate is Statistic.MEAN:
        assert int8["published"] and published.variant_names == ["fp32", "int8-static"]
        assert published.variant("int8-static").metrics.gate == "mean"
    else:
        drop = metrics[f"accuracy_drop_{gate.value}"]
        assert not int8["published"] and published.variant_names == ["fp32"]
        assert int8["reason"] == f"{gate.value} drop {drop:.4f} > 0.02 (over examples)"
        assert not (store / "gemm/1/int8-static.onnx").exists()
    page = (store / "gemm/1/report.html").read_text()
    assert f"the drop in the {gate.value} against fp32" in page and f"{metrics['accuracy_p5']:.4f}" in page


def test_the_top1_tail_is_over_classes_not_0_1_examples() -> None:
    # 10 classes of 50; the variant breaks 20 of class 3's 50 and nothing else: 4 % of examples,
    # under the 5 % at which an example-wise p5 of 0/1 scores would even notice.
    rng = np.random.default_rng(8)
    labels = np.repeat(np.arange(10), 50)
    reference = np.eye(10)[labels] + rng.random((500, 10)) * 0.1
    reference[labels == 7, 7] = 0  # fp32's own worst class: it gets 7 wrong
    variant = reference.copy()
    variant[np.flatnonzero(labels == 3)[:20], 3] = 0
    fp32, int8 = scores(Metric.TOP1, reference, reference, labels), scores(Metric.TOP1, variant, reference, labels)
    assert (int8.metric, int8.unit, len(int8.units)) == ("top1", "class", 10)
    assert int8.drop(fp32, Statistic.MEAN) == pytest.approx(0.04)
    assert int8.statistic(Statistic.MIN) == fp32.statistic(Statistic.MIN) == 0  # the worst class is fp32's too
    # ... so fp32's min minus the variant's would be 0; the largest class regression is not.
    assert int8.drop(fp32, Statistic.MIN) == pytest.approx(0.4)
    # Without labels the classes are fp32's predictions, on which fp32 agrees with itself throughout.
    agreed, agreement = scores(Metric.TOP1, reference, reference, None), scores(Metric.TOP1, variant, reference, None)
    assert agreement.metric == "top1-agreement" and agreed.statistic(Statistic.MIN) == 1
    assert agreement.drop(agreed, Statistic.MIN) == pytest.approx(20 / (reference.argmax(1) == 3).sum())


def test_asymmetric_linear_quantization_of_weights(tmp_path: Path) -> None:
    # Range [-1, 1.55]: scale 0.01, so the formula's steps fall exactly on integers.
    w = np.array([[-1.0, -0.333, 0.0], [0.5, 1.234, 1.55]], np.float32)
    model = build_gemm(tmp_path / "gemm.onnx", w)
    np.savez(tmp_path / "data.npz", x=np.random.default_rng(3).standard_normal((32, 2)).astype(np.float32))
    data = load_dataset(tmp_path / "data.npz", from_onnx_file(model).manifest)
    options = StaticQuantization(per_channel=False, symmetric_weights=False)
    quantized = onnx.load(str(quantize_int8_static(model, tmp_path / "q.onnx", data, options)))
    stored = {init.name: numpy_helper.to_array(init) for init in quantized.graph.initializer}
    (q,) = [array for array in stored.values() if array.dtype == np.int8 and array.size == w.size]
    n = 8
    unsigned = np.round((w - w.min()) / (w.max() - w.min()) * (2**n - 1))
    # int8 storage holds the same steps, shifted by 2ⁿ⁻¹ into the signed range.
    np.testing.assert_array_equal(q.astype(np.int64) + 2 ** (n - 1), unsigned.astype(np.int64))


def test_default_variants_follow_the_model_kind(tmp_path: Path) -> None:
    cnn = build_cnn(tmp_path / "cnn.onnx")
    mlp = build_example(tmp_path / "mlp.onnx")
    assert default_variants(cnn, calibration=True) == (VariantKind.FP32, VariantKind.FP16, VariantKind.INT8_STATIC)
    assert default_variants(cnn, calibration=False) == (VariantKind.FP32, VariantKind.FP16)
    assert default_variants(mlp, calibration=False) == (VariantKind.FP32, VariantKind.FP16, VariantKind.INT8_DYNAMIC)


@pytest.mark.parametrize("method", list(Calibration))
@pytest.mark.parametrize("symmetric", [False, True])
def test_a_convolutional_model_quantizes_statically(tmp_path: Path, method: Calibration, symmetric: bool) -> None:
    model = build_cnn(tmp_path / "cnn.onnx")
    images = np.random.default_rng(4).random((200, 1, 8, 8), dtype=np.float32)
    np.savez(tmp_path / "images.npz", image=images)
    result = optimize(OptimizeSettings(
        model=model, name="cnn", version="1", store=tmp_path / "store", eval=tmp_path / "images.npz",
        calibration=tmp_path / "images.npz", max_accuracy_drop=0.1, speed=FAST,
        static=StaticQuantization(calibration=method, symmetric_activations=symmetric),
    ))
    assert result.manifest.variant_names == ["fp32", "fp16", "int8-static"]
    assert result.manifest.variant("int8-static").metrics.accuracy >= 0.9
    quantized = onnx.load(str(tmp_path / "store/cnn/1/int8-static.onnx"))
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= {node.op_type for node in quantized.graph.node}
    stored = {init.name: numpy_helper.to_array(init) for init in quantized.graph.initializer}
    activation_zero_points = [
        stored[node.input[2]] for node in quantized.graph.node if node.op_type == "QuantizeLinear" and len(node.input) > 2
    ]
    assert activation_zero_points
    assert all((zero == 0).all() for zero in activation_zero_points) == symmetric


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ("not onnx", StoreError, "cannot read ONNX model"),
        ("eval array name", DatasetError, "do not match model inputs ['input']"),
        ("eval dtype", DatasetError, "'input' is float64, the model takes FP32"),
        ("eval shape", DatasetError, "'input' has shape [10, 63], the model takes [-1, 64]"),
        ("labels", DatasetError, "'labels' must be integer class indices"),
        ("static without calibration", OptimizeError, "int8-static needs a calibration set"),
        ("unknown output", OptimizeError, "output 'logits' is not one of the model's ['output']"),
        ("version exists", OptimizeError, "already exists; pass --force"),
    ],
)
def test_bad_requests_leave_the_store_untouched(tmp_path: Path, change: str, error: type, message: str) -> None:
    good = settings(tmp_path, variants=(VariantKind.FP32,))
    optimize(good)
    before = store_listing(good.store)
    bad = tmp_path / "bad.npz"
    if change == "not onnx":
        (tmp_path / "model.txt").write_text("hello")
        request = settings(tmp_path, model=tmp_path / "model.txt", version="3")
    elif change == "eval array name":
        np.savez(bad, inputs=np.zeros((10, 64), np.float32))
        request = settings(tmp_path, eval=bad, version="3")
    elif change == "eval dtype":
        np.savez(bad, input=np.zeros((10, 64)))
        request = settings(tmp_path, eval=bad, version="3")
    elif change == "eval shape":
        np.savez(bad, input=np.zeros((10, 63), np.float32))
        request = settings(tmp_path, eval=bad, version="3")
    elif change == "labels":
        np.savez(bad, input=np.zeros((10, 64), np.float32), labels=np.zeros(9, np.int64))
        request = settings(tmp_path, eval=bad, version="3")
    elif change == "static without calibration":
        request = settings(tmp_path, calibration=None, version="3")
    elif change == "unknown output":
        request = settings(tmp_path, output="logits", version="3")
    else:
        request = good
    with pytest.raises(error) as raised:
        optimize(request)
    assert message in str(raised.value)
    assert store_listing(good.store) == before


def test_force_replaces_a_version_whole(tmp_path: Path) -> None:
    first = settings(tmp_path, variants=(VariantKind.FP32, VariantKind.FP16))
    optimize(first)
    optimize(settings(tmp_path, variants=(VariantKind.INT8_DYNAMIC,), force=True))
    assert read_version(first.store / "example/2").manifest.variant_names == ["int8-dynamic"]
    assert sorted(p.name for p in (first.store / "example/2").glob("*.onnx")) == ["int8-dynamic.onnx"]
    assert store_listing(first.store)[:2] == ["example", "example/2"]


def test_the_command_line_reports_and_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, eval_set, calibration = example_data(tmp_path)
    args = ["optimize", str(model), "--name", "example", "--version", "1", "--store", str(tmp_path / "store"),
            "--eval", str(eval_set), "--calibration", str(calibration), "--bench-seconds", "0.05"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "example version 1" in out and "int8-dynamic" in out and "published ['fp32', 'fp16'" in out
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--variants", "int4"])
    assert exit_.value.code == 2


def test_pruned_and_distilled_are_smaller_dense_models_that_agree(tmp_path: Path) -> None:
    model = build_cnn(tmp_path / "cnn.onnx")
    teacher = ort.InferenceSession(str(model))
    rng = np.random.default_rng(5)
    images = rng.random((600, 1, 8, 8), dtype=np.float32)
    labels = teacher.run(None, {"image": images})[0].argmax(1)
    np.savez(tmp_path / "train.npz", image=images[:400], labels=labels[:400])
    np.savez(tmp_path / "eval.npz", image=images[400:])
    result = optimize(OptimizeSettings(
        model=model, name="cnn", version="1", store=tmp_path / "store", eval=tmp_path / "eval.npz",
        train=tmp_path / "train.npz", variants=(VariantKind.FP32, VariantKind.PRUNED, VariantKind.DISTILLED),
        max_accuracy_drop=0.25, speed=FAST,
    ))
    assert result.manifest.variant_names == ["fp32", "pruned", "distilled"]
    for name in ("pruned", "distilled"):
        graph = onnx.load(str(tmp_path / f"store/cnn/1/{name}.onnx")).graph
        weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        shapes = sorted(array.shape for array in weights.values() if array.ndim == 4)
        assert shapes == [(2, 1, 3, 3)], f"{name}: conv filters should halve from 4 to 2, got {shapes}"
        variant = result.manifest.variant(name)
        assert variant.precision.value == "fp32" and variant.metrics.accuracy >= 0.75
        served = ort.InferenceSession(str(tmp_path / f"store/cnn/1/{name}.onnx")).run(None, {"image": images[400:403]})[0]
        assert served.shape == (3, 3)  # the batch axis stays variable


def test_distillation_into_a_student_the_user_supplies(tmp_path: Path) -> None:
    teacher = build_cnn(tmp_path / "cnn.onnx")
    student = build_gemm(tmp_path / "student.onnx", np.zeros((64, 3), np.float32))  # a flat, linear model
    images = np.random.default_rng(6).random((400, 64), dtype=np.float32)
    np.savez(tmp_path / "flat.npz", x=images)
    # The teacher sees the same pixels as 8×8 images; the student learns its outputs from flat rows.
    teacher_flat = tmp_path / "teacher_flat.onnx"
    model = onnx.load(str(teacher))
    graph = model.graph
    reshape = onnx.helper.make_node("Reshape", ["x", "image_shape"], ["image"])
    graph.node.insert(0, reshape)
    graph.initializer.append(numpy_helper.from_array(np.array([-1, 1, 8, 8], np.int64), "image_shape"))
    del graph.input[:]
    graph.input.append(onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 64]))
    onnx.save(model, str(teacher_flat))
    result = optimize(OptimizeSettings(
        model=teacher_flat, name="flat", version="1", store=tmp_path / "store", eval=tmp_path / "flat.npz",
        calibration=tmp_path / "flat.npz", variants=(VariantKind.FP32, VariantKind.DISTILLED), student=student,
        max_accuracy_drop=1.0, speed=FAST,
    ))
    distilled = onnx.load(str(tmp_path / "store/flat/1/distilled.onnx")).graph
    assert {node.op_type for node in distilled.node} <= {"Gemm", "MatMul", "Add", "Transpose"}  # the student's shape
    trained = [numpy_helper.to_array(init) for init in distilled.initializer if numpy_helper.to_array(init).size == 64 * 3]
    assert trained and np.abs(trained[0]).sum() > 0  # it learned from the teacher, starting from zeros
    assert result.manifest.variant("distilled").metrics.accuracy > 1 / 3  # better than chance
