"""The bundled example model: a small MLP, built deterministically so nothing ships as a blob.

`example`: input `input` FP32 [-1, 64] → Gemm(64→96) → Relu → Gemm(96→10) → output `output`
FP32 [-1, 10]. The weights are fixed pseudo-random numbers: the model is for exercising the
serving path, not for predicting anything.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .store import ModelVersion, from_onnx_file

NAME = "example"
FEATURES, HIDDEN, CLASSES = 64, 96, 10


def build_example(path: Path) -> Path:
    """Write the example model to `path` (the same bytes every time)."""
    rng = np.random.default_rng(0)

    def weights(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32), name)

    graph = helper.make_graph(
        nodes=[
            helper.make_node("Gemm", ["input", "w1", "b1"], ["h"]),
            helper.make_node("Relu", ["h"], ["a"]),
            helper.make_node("Gemm", ["a", "w2", "b2"], ["output"]),
        ],
        name=NAME,
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", FEATURES])],
        outputs=[helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=[
            weights("w1", FEATURES, HIDDEN),
            numpy_helper.from_array(np.zeros(HIDDEN, np.float32), "b1"),
            weights("w2", HIDDEN, CLASSES),
            numpy_helper.from_array(np.zeros(CLASSES, np.float32), "b2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="quiver")
    model.ir_version = 8  # readable by every onnxruntime Quiver supports
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def example_version(directory: Path) -> ModelVersion:
    """Build the example model into `directory` and describe it as a servable model version."""
    return from_onnx_file(build_example(directory / f"{NAME}.onnx"), name=NAME)

