"""Small ONNX models the tests build, and a model store holding them.

`pair` has two inputs and two outputs of different dtypes, and a Gather that ONNX Runtime
rejects for out-of-range indices: a valid-looking request the model itself refuses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from quiver.serving import Autoscaling, Replicas, build_example, from_onnx_file, write_version

PAIR_TABLE = np.arange(100, 110, dtype=np.int64)


def build_pair(path: Path) -> Path:
    """x FP32 [-1, 3], k INT64 [-1, 2] → total FP32 [-1, 1] = Σx, looked_up INT64 [-1, 2] = table[k]."""
    graph = helper.make_graph(
        nodes=[
            helper.make_node("ReduceSum", ["x", "axes"], ["total"], keepdims=1),
            helper.make_node("Gather", ["table", "k"], ["looked_up"], axis=0),
        ],
        name="pair",
        inputs=[
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("k", TensorProto.INT64, ["batch", 2]),
        ],
        outputs=[
            helper.make_tensor_value_info("total", TensorProto.FLOAT, ["batch", 1]),
            helper.make_tensor_value_info("looked_up", TensorProto.INT64, ["batch", 2]),
        ],
        initializer=[
            numpy_helper.from_array(np.array([1], np.int64), "axes"),
            numpy_helper.from_array(PAIR_TABLE, "table"),
        ],
    )
    return _save(graph, path)


def write_store(root: Path) -> Path:
    """A store: example (version 1) and pair (versions 1 and 2), half a CPU per replica, and
    `tuned` (version 1): the example model through `quiver optimize` (fp32, fp16, int8-static)."""
    half_cpu = Replicas(num_cpus=0.5)
    autoscaled = Replicas(num_cpus=0.5, autoscaling=Autoscaling(min_replicas=1, max_replicas=2, target_ongoing_requests=8))
    for name, version, build in (("example", "1", build_example), ("pair", "1", build_pair), ("pair", "2", build_pair)):
        directory = root / name / version
        directory.mkdir(parents=True)
        signature = from_onnx_file(build(directory / "model.onnx")).manifest
        # pair 1 scales with load, within bounds Serve keeps.
        replicas = autoscaled if (name, version) == ("pair", "1") else half_cpu
        variant = signature.variants[0].model_copy(update={"replicas": replicas})
        write_version(root, signature.model_copy(update={"name": name, "version": version, "variants": [variant]}))
    _optimized_example(root)
    return root


def _optimized_example(store: Path) -> None:
    from quiver.serving.optimize import OptimizeSettings, SpeedBudget, VariantKind, optimize

    scratch = store.parent / f"{store.name}-sources"
    scratch.mkdir()
    np.savez(scratch / "data.npz", input=np.random.default_rng(0).standard_normal((256, 64)).astype(np.float32))
    optimize(OptimizeSettings(
        model=build_example(scratch / "example.onnx"), name="tuned", version="1", store=store,
        eval=scratch / "data.npz", calibration=scratch / "data.npz",
        variants=(VariantKind.FP32, VariantKind.FP16, VariantKind.INT8_STATIC),
        max_accuracy_drop=0.1, speed=SpeedBudget(seconds=0.05, max_runs=50, throughput_batch=8),
    ))



def reference(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ONNX Runtime run directly on the same file: what every served answer must equal."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def build_cnn(path: Path) -> Path:
    """image FP32 [-1, 1, 8, 8] → Conv(4, 3×3) → Relu → Flatten → Gemm(→3) → logits [-1, 3]."""
    rng = np.random.default_rng(1)
    graph = helper.make_graph(
        nodes=[
            helper.make_node("Conv", ["image", "kernel", "bias"], ["features"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["features"], ["active"]),
            helper.make_node("Flatten", ["active"], ["flat"]),
            helper.make_node("Gemm", ["flat", "w", "b"], ["logits"]),
        ],
        name="cnn",
        inputs=[helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=[
            numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "kernel"),
            numpy_helper.from_array(np.zeros(4, np.float32), "bias"),
            numpy_helper.from_array((rng.standard_normal((256, 3)) / 16).astype(np.float32), "w"),
            numpy_helper.from_array(np.zeros(3, np.float32), "b"),
        ],
    )
    return _save(graph, path)


def build_gemm(path: Path, weights: np.ndarray) -> Path:
    """x FP32 [-1, rows of weights] → Gemm(weights) → y: one layer whose weights a test chooses."""
    rows, columns = weights.shape
    graph = helper.make_graph(
        nodes=[helper.make_node("Gemm", ["x", "w", "b"], ["y"])],
        name="gemm",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", rows])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", columns])],
        initializer=[
            numpy_helper.from_array(weights.astype(np.float32), "w"),
            numpy_helper.from_array(np.zeros(columns, np.float32), "b"),
        ],
    )
    return _save(graph, path)


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
