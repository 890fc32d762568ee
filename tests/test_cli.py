"""`quiver serve` as the README runs it: the bundled example with no argument, clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton

from quiver.serving import build_example

from .models import reference
from .serverproc import quiver_serve


def test_serve_with_no_argument_serves_the_bundled_example(tmp_path: Path) -> None:
    x = np.random.default_rng(11).standard_normal((4, 64)).astype(np.float32)
    with quiver_serve("--log-level", "DEBUG") as server:
        assert server.models == "example:1"
        client = triton.InferenceServerClient(server.address)
        tensor = triton.InferInput("input", [4, 64], "FP32")
        tensor.set_data_from_numpy(x)
        output = client.infer("example", [tensor], request_id="trace-me-7").as_numpy("output")
    # Every line the router writes while serving a request names it.
    assert "[request trace-me-7]: dispatching to example:1 variant fp32 (default)" in server.log()
    # Stopping (SIGTERM, exit status 0) is checked by quiver_serve on the way out.
    expected = reference(build_example(tmp_path / "example.onnx"), {"input": x})["output"]
    np.testing.assert_allclose(output, expected, rtol=0, atol=1e-5)


def test_serve_refuses_a_missing_model_with_a_message(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "quiver", "serve", str(tmp_path / "missing.onnx")],
        capture_output=True, text=True, timeout=60,
    )
    assert completed.returncode == 2
    assert f"cannot read ONNX model {tmp_path / 'missing.onnx'}" in completed.stderr
