"""The fp16 variant: weights and compute in float16, inputs and outputs kept float32.

Keeping fp32 I/O means clients send the same tensors to every variant. ONNX Runtime's CPU
provider runs most fp16 kernels by casting around them (slow), so this variant is meant for
GPU pools.
"""

from __future__ import annotations

from pathlib import Path

import onnx

# ONNX Runtime's copy of onnxconverter-common's converter: it also retypes Cast nodes, which
# onnxconverter-common 1.16 leaves casting to float32 (MiniLM then fails to load).
from onnxruntime.transformers.float16 import convert_float_to_float16


def convert_fp16(source: Path, target: Path) -> Path:
    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(target))
    return target
