"""The targets the harness compares, and how each is started: a command, its environment, its port.

Every server listens on 127.0.0.1 and serves the same `.onnx` file with ONNX Runtime on one
intra-op thread per CPU of the share (benchmarks/peers/ortmodel.py opens sessions exactly as
Quiver's replicas do). `onnxruntime` is not a server: the load generator runs it in-process
(benchmarks/inprocess.py). Called by benchmarks/harness.py, which starts, pins and stops them.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from benchmarks.models import BenchModel

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "benchmarks/peers"
PEER_VENVS = {name: ROOT / f".venv-bench-{name}" for name in ("kserve", "mlserver", "pytriton")}
# PyTriton 0.7.0's Python backend stub fails under Python 3.11.7 (`_thread.RLock` has no
# `_recursion_count`); it runs under 3.12.
PEER_PYTHON = {"pytriton": "3.12"}


def peer_python(peer: str, default: str) -> str:
    """The interpreter a peer's venv is made with: python3.X on PATH, else pyenv's newest 3.X; DEFAULT for the other peers."""
    version = PEER_PYTHON.get(peer)
    if version is None:
        return default
    found = shutil.which(f"python{version}") or max(
        (str(path) for path in Path.home().glob(f".pyenv/versions/{version}.*/bin/python{version}")), default=None)
    if found is None:
        raise FileNotFoundError(f"{peer} needs Python {version}: put python{version} on PATH (or install it with pyenv)")
    return found


@dataclass(frozen=True)
class Launch:
    """A server to start; `address` is None when its `ready: HOST:PORT` line says where it listens."""

    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    address: str | None = None
    metadata: tuple[tuple[str, str], ...] = ()  # gRPC metadata every request carries
    protocol: str = "grpc"  # or "http" (v2 REST, JSON), "http-binary" (Triton's binary tensor data extension)


@dataclass(frozen=True)
class Target:
    name: str
    about: str
    # (model, scratch directory, CPUs of the server's share) → what to start; None: in-process.
    launch: Callable[[BenchModel, Path, int], Launch] | None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _door(protocol: str, grpc_port: int, http_port: int) -> str:
    """The address the load generator knocks on: a peer serves both protocols, on two ports."""
    return f"127.0.0.1:{grpc_port if protocol == 'grpc' else http_port}"


def _peer_env() -> dict[str, str]:
    return {"PYTHONPATH": str(PEERS), "RAY_USAGE_STATS_ENABLED": "0"}


def _quiver(model: BenchModel, scratch: Path, cpus: int, protocol: str = "grpc") -> Launch:
    # The console script beside this interpreter, as a user runs it (`-m quiver` would put the
    # working directory first on sys.path); servers run in the scratch directory.
    script = Path(sys.executable).with_name("quiver")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "quiver"]
    served = [str(model.store)] if model.store else [str(model.file), "--name", model.name]
    http_port = "-1" if protocol == "grpc" else "0"  # its ready line names the port taken
    return Launch(
        [*command, "serve", *served, "--port", "0", "--http-port", http_port, "--metrics-port", "-1", "--num-cpus", str(cpus),
         "--log-level", "WARNING"],
        {"RAY_USAGE_STATS_ENABLED": "0"}, protocol=protocol,
    )


def _plain(model: BenchModel, scratch: Path, cpus: int) -> Launch:
    port = free_port()
    return Launch([sys.executable, str(PEERS / "plain_grpc.py"), "--model", str(model.file), "--port", str(port),
                   "--threads", str(cpus)], _peer_env(), f"127.0.0.1:{port}")


def _serve(model: BenchModel, scratch: Path, cpus: int) -> Launch:
    port = free_port()
    return Launch([sys.executable, str(PEERS / "serve_grpc.py"), "--model", str(model.file), "--port", str(port),
                   "--num-cpus", str(cpus)], _peer_env(), f"127.0.0.1:{port}",
                  # Serve's gRPC proxy picks the application from this metadata, as its docs show.
                  metadata=(("application", "model"),))


def _venv_python(peer: str, program: str = "python") -> str:
    path = PEER_VENVS[peer] / "bin" / program
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: install the peers first (python -m benchmarks peers)")
    return str(path)


def _kserve(model: BenchModel, scratch: Path, cpus: int, protocol: str = "grpc") -> Launch:
    port, http_port = free_port(), free_port()
    return Launch([_venv_python("kserve"), str(PEERS / "kserve_server.py"), "--model", str(model.file),
                   "--name", model.name, "--port", str(port), "--http-port", str(http_port), "--threads", str(cpus)],
                  _peer_env(), _door(protocol, port, http_port), protocol=protocol)


def _mlserver(model: BenchModel, scratch: Path, cpus: int, protocol: str = "grpc") -> Launch:
    port, http_port = free_port(), free_port()
    directory = scratch / f"mlserver-{model.key}"
    directory.mkdir(parents=True, exist_ok=True)
    # parallel_workers 0: inference runs in the server process. MLServer's default (1) sends
    # every request to a worker process and back, which only costs on a one-CPU share; and with
    # the environment pip resolves today (mlserver 1.7.1, uvloop 0.23) that worker dies at start
    # (`asyncio.get_event_loop()` under uvloop: "no current event loop"), so the model never loads.
    settings = {"host": "127.0.0.1", "grpc_port": port, "http_port": http_port, "metrics_port": free_port(),
                "parallel_workers": 0, "debug": False}
    model_settings = {"name": model.name, "implementation": "mlserver_runtime.OrtRuntime",
                      "parameters": {"uri": str(model.file)}}
    (directory / "settings.json").write_text(json.dumps(settings))
    (directory / "model-settings.json").write_text(json.dumps(model_settings))
    return Launch([_venv_python("mlserver", "mlserver"), "start", str(directory)],
                  {**_peer_env(), "BENCH_ORT_THREADS": str(cpus)}, _door(protocol, port, http_port),
                  protocol=protocol)


def _pytriton(model: BenchModel, scratch: Path, cpus: int, protocol: str = "grpc") -> Launch:
    port, http_port = free_port(), free_port()
    return Launch([_venv_python("pytriton"), str(PEERS / "pytriton_server.py"), "--model", str(model.file),
                   "--name", model.name, "--grpc-port", str(port), "--http-port", str(http_port),
                   "--metrics-port", str(free_port()), "--threads", str(cpus), "--workspace", str(scratch / f"pytriton-{model.key}-{port}")],
                  _peer_env(), _door(protocol, port, http_port), protocol=protocol)


TARGETS: dict[str, Target] = {
    target.name: target
    for target in (
        Target("onnxruntime", "ONNX Runtime in-process, ideal batching (no network, no serving)", None),
        Target("grpc-plain", "one grpc.aio process calling ONNX Runtime (no hop, no batching)", _plain),
        Target("quiver", "quiver serve: router → replica data plane (coalesced calls, batching)", _quiver),
        Target("quiver-http", "quiver serve's REST door (--http-port), v2 JSON", partial(_quiver, protocol="http")),
        Target("quiver-http-binary", "quiver serve's REST door, Triton's binary tensor data extension",
               partial(_quiver, protocol="http-binary")),
        Target("ray-serve", "Ray Serve's gRPC proxy → ingress deployment (v2 ModelInfer)", _serve),
        Target("kserve", "KServe ModelServer (Python), gRPC v2, ORT model class", _kserve),
        Target("kserve-http", "KServe ModelServer (Python), REST v2 JSON, ORT model class", partial(_kserve, protocol="http")),
        Target("mlserver", "MLServer, gRPC v2, custom ORT runtime", _mlserver),
        Target("mlserver-http", "MLServer, REST v2 JSON, custom ORT runtime", partial(_mlserver, protocol="http")),
        Target("pytriton", "Triton (PyTriton 0.7.0's tritonserver), gRPC, Python callable running ORT, dynamic batching",
               _pytriton),
        Target("pytriton-http", "Triton (PyTriton), REST v2 JSON", partial(_pytriton, protocol="http")),
        Target("pytriton-http-binary", "Triton (PyTriton), REST with its binary tensor data extension",
               partial(_pytriton, protocol="http-binary")),
    )
}
