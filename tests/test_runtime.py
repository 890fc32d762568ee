"""The ONNX Runtime wrapper: integrity checked before load, answers equal to plain ORT."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from quiver.serving import Device, InferenceError, IntegrityError, ModelRuntime, from_onnx_file, variant_bytes

from .models import build_pair, reference


@pytest.fixture
def pair(tmp_path: Path):
    return from_onnx_file(build_pair(tmp_path / "pair.onnx"))


def runtime(version, **kwargs) -> ModelRuntime:
    return ModelRuntime(variant_bytes(version, version.manifest.default), version.key, version.manifest.inputs, **kwargs)


def test_outputs_equal_onnxruntime_run_directly(pair) -> None:
    feeds = {"x": np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), "k": np.array([[1, 2]] * 4)}
    outputs = runtime(pair).run(feeds)
    expected = reference(pair.path(pair.manifest.default), feeds)
    assert list(outputs) == ["total", "looked_up"]
    np.testing.assert_allclose(outputs["total"], expected["total"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(outputs["looked_up"], expected["looked_up"])


def test_a_tampered_file_is_refused_before_loading(pair) -> None:
    path = pair.path(pair.manifest.default)
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(IntegrityError, match="pair:1 variant 'fp32': .* has sha256 .*, the manifest expects"):
        runtime(pair)


def test_input_the_model_rejects_raises_inference_error(pair) -> None:
    with pytest.raises(InferenceError, match="Gather"):
        runtime(pair).run({"x": np.zeros((1, 3), np.float32), "k": np.array([[0, 50]])})


def test_a_gpu_variant_runs_where_it_can_and_says_so(pair, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        session = runtime(pair, device=Device.GPU)
    on_gpu = {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(session.providers)
    # Without a usable GPU the session falls back to the CPU, with a warning that says so.
    assert on_gpu or ("running on CPU" in caplog.text and session.providers == ["CPUExecutionProvider"])
    assert session.run({"x": np.ones((2, 3), np.float32), "k": np.zeros((2, 2), np.int64)})["total"].tolist() == [[3.0]] * 2
