"""One ONNX Runtime session, opened the way every target of the comparison opens it.

Imported by each peer server (in its own virtual environment: only onnxruntime and numpy are
assumed) and by the load generator's in-process target, so every target runs the same file
with the same session settings as Quiver's replicas (serving/runtime.py): `threads`
intra-op threads, one inter-op thread, no spinning, all graph optimizations.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

# Open Inference Protocol datatype names, both ways.
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
DATATYPES: dict[np.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}


class OrtModel:
    """A session on one CPU and the names of its outputs, in the model's order."""

    def __init__(self, path: str, threads: int = 1) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        self.output_names = [output.name for output in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self.output_names, feeds)


def datatype(array: np.ndarray) -> str:
    return DATATYPES[array.dtype]
