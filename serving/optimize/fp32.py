"""The fp32 variant: ONNX Runtime's graph optimizations applied once, offline, and saved.

Extended level only: the `all` level adds layout changes tied to the CPU it ran on, which a
file meant for any node of a pool must not carry.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort


def optimize_graph(source: Path, target: Path) -> Path:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    return target
