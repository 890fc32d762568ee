"""int8 variants, with ONNX Runtime's quantization tools.

- dynamic: int8 weights (per channel), activations quantized at run time from their observed
  range; no calibration. For MatMul/Gemm-heavy models (transformers).
- static QDQ: activations' ranges calibrated on a data set (MinMax, Entropy or Percentile),
  weights per channel. Linear quantization: q = round(x / scale) + zero_point, with
  scale = (max − min) / (2ⁿ − 1) for the asymmetric scheme and scale = max|x| / (2ⁿ⁻¹ − 1),
  zero_point = 0 for the symmetric one. Defaults follow ONNX Runtime's guidance: S8S8 QDQ on
  CPUs (asymmetric activations, symmetric weights); symmetric everything for GPUs (TensorRT).
"""

from __future__ import annotations

import enum
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType
from onnxruntime.quantization import quantize_dynamic, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from .datasets import Dataset


class Calibration(str, enum.Enum):
    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"


_METHODS = {
    Calibration.MINMAX: CalibrationMethod.MinMax,
    Calibration.ENTROPY: CalibrationMethod.Entropy,
    Calibration.PERCENTILE: CalibrationMethod.Percentile,
}


@dataclass(frozen=True)
class StaticQuantization:
    calibration: Calibration = Calibration.MINMAX
    per_channel: bool = True
    symmetric_activations: bool = False
    symmetric_weights: bool = True
    # Entropy and Percentile keep histograms of every activation: cap the rows they see.
    max_calibration_rows: int = 512

    @classmethod
    def for_device(cls, gpu: bool, **choices: object) -> StaticQuantization:
        """ONNX Runtime's defaults for the target, overridden by explicit `choices`."""
        return cls(**({"symmetric_activations": True} if gpu else {}) | choices)


def quantize_int8_dynamic(source: Path, target: Path, per_channel: bool = True) -> Path:
    # MatMul and Gemm only: that is where the time goes, while int8 embedding tables (Gather)
    # cost accuracy and save no compute. Per-channel weight scales keep MiniLM's cosine ≥ 0.99.
    quantize_dynamic(
        str(source), str(target), weight_type=QuantType.QInt8, per_channel=per_channel, op_types_to_quantize=["MatMul", "Gemm"]
    )
    return target


def quantize_int8_static(source: Path, target: Path, calibration: Dataset, options: StaticQuantization) -> Path:
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        # Shape inference and graph cleanup first, as ONNX Runtime recommends before QDQ.
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        # Equal batches: the Entropy and Percentile calibrators stack what each batch produced.
        batch = min(_CALIBRATION_BATCH, calibration.rows)
        rows = min(calibration.rows, options.max_calibration_rows) // batch * batch
        sample = Dataset({name: array[:rows] for name, array in calibration.inputs.items()}, None)
        quantize_static(
            str(prepared),
            str(target),
            calibration_data_reader=_Reader(sample, batch),
            quant_format=QuantFormat.QDQ,
            per_channel=options.per_channel,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=_METHODS[options.calibration],
            extra_options={
                "ActivationSymmetric": options.symmetric_activations,
                "WeightSymmetric": options.symmetric_weights,
            },
        )
    return target


_CALIBRATION_BATCH = 16


class _Reader(CalibrationDataReader):
    def __init__(self, data: Dataset, batch: int) -> None:
        self._batches = iter(data.batches(batch))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)
