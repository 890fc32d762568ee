"""The same request through KServe's Python clients (gRPC and REST), in a process (and venv) of its own.

kserve pins protobuf < 7, which Quiver's generated code cannot run with, so the client lives
in `.venv-kserve` (made by `make test`); QUIVER_KSERVE_PYTHON points elsewhere if needed.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from .models import reference
from .serverproc import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
KSERVE_PYTHON = Path(os.environ.get("QUIVER_KSERVE_PYTHON", ROOT / ".venv-kserve/bin/python"))


@pytest.mark.parametrize("transport", ["grpc", "rest"])
@pytest.mark.parametrize("encoding", ["raw", "typed"])
def test_kserve_client_gets_onnxruntime_answers(
    server: ServerProcess, store: Path, tmp_path: Path, encoding: str, transport: str
) -> None:
    address = server.address if transport == "grpc" else server.http_url.removeprefix("http://")
    assert KSERVE_PYTHON.exists(), f"{KSERVE_PYTHON} is missing: `make test` creates it"
    x = np.random.default_rng(5).standard_normal((3, 64)).astype(np.float32)
    np.save(tmp_path / "in.npy", x)
    completed = subprocess.run(
        [str(KSERVE_PYTHON), str(ROOT / "tests/clients/kserve_infer.py"), address, "example", "input",
         str(tmp_path / "in.npy"), str(tmp_path / "out.npy"), encoding, transport],
        capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    reply = json.loads(completed.stdout.strip().splitlines()[-1])
    # KServe's REST client drops the answer's model_version (InferResponse.from_bytes); Quiver's parameters say it too.
    assert reply["model_version"] == ("1" if transport == "grpc" else None)
    assert reply["parameters"]["quiver.version"] == "1" and reply["parameters"]["quiver.variant"] == "fp32"
    if transport == "rest":  # KServe's REST client, InferenceRESTClient, asks these too
        assert reply["server_ready"] is True and reply["model_ready"] is True
    expected = reference(store / "example/1/model.onnx", {"input": x})["output"]
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, rtol=0, atol=1e-5)
