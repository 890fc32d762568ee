"""Small ONNX models the tests build, and a model store holding them.

`pair` has two inputs and two outputs of different dtypes, and a Gather that ONNX Runtime
rejects for out-of-range indices: a valid-looking request the model itself refuses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from quiver.serving import Replicas, build_example, from_onnx_file, write_version

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
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def write_store(root: Path) -> Path:
    """A store: example (version 1) and pair (versions 1 and 2), half a CPU per replica."""
    half_cpu = Replicas(num_cpus=0.5)
    for name, version, build in (("example", "1", build_example), ("pair", "1", build_pair), ("pair", "2", build_pair)):
        directory = root / name / version
        directory.mkdir(parents=True)
        signature = from_onnx_file(build(directory / "model.onnx")).manifest
        variant = signature.variants[0].model_copy(update={"replicas": half_cpu})
        write_version(root, signature.model_copy(update={"name": name, "version": version, "variants": [variant]}))
    return root



def reference(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ONNX Runtime run directly on the same file: what every served answer must equal."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
