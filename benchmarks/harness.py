"""The benchmark harness: start each target, drive it with the load generator, stop it, report.

    python -m benchmarks bench [--targets ...] [--models ...] [--seconds 5] ...   (benchmarks/__main__.py)

For every (model, target): the target's server is started on 127.0.0.1 (benchmarks/targets.py)
pinned to the server CPUs, the load generator (benchmarks/loadgen.py) runs in a process of its
own pinned to the client CPUs, then the server is stopped (SIGTERM, then its process group is
killed if anything is left). Pinning is `os.sched_setaffinity` in the child before it execs,
as `taskset -c` does; everything a server starts (Ray's raylet, GCS, workers, replicas)
inherits it. The in-process ONNX Runtime target runs in a process of its own in the load
generator's place (benchmarks/inprocess.py), pinned to the server CPUs instead. A target that
fails to start, or answers nothing, is recorded with its error (and its log's tail) and the run
goes on.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks import models as bench_models
from benchmarks import provenance
from benchmarks.models import BenchModel
from benchmarks.targets import PEER_VENVS, ROOT, TARGETS, Launch

READY = re.compile(r"^ready: (?P<address>\S+)", re.MULTILINE)
HTTP_READY = re.compile(r"^ready: .* http=http://(?P<address>\S+)", re.MULTILINE)  # quiver serve's line
Log = Callable[[str], None]


@dataclass(frozen=True)
class BenchSettings:
    targets: tuple[str, ...] = tuple(TARGETS)
    models: tuple[str, ...] = bench_models.KEYS
    concurrency: tuple[int, ...] = (1, 4, 16, 64)
    rates: tuple[float, ...] | None = None  # None: each model's own (BenchModel.rates)
    seconds: float = 5.0  # measured, per point
    warmup_s: float = 1.0  # per point, same load, discarded
    rpc_timeout_s: float = 10.0
    ready_timeout_s: float = 60.0  # until a first ModelInfer succeeds
    startup_timeout_s: float = 180.0  # until the server says ready / its port accepts
    max_in_flight: int = 4096  # open loop
    max_batch: int = 64  # in-process target's batches (Quiver's default max_batch_size)
    server_cpus: tuple[int, ...] | None = None  # None: decided by `pinning()`
    client_cpus: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Pinning:
    server_cpus: tuple[int, ...] | None
    client_cpus: tuple[int, ...] | None
    how: str


def pinning(settings: BenchSettings) -> Pinning:
    """Server and client on separate CPUs when there are at least two: server first, client last."""
    available = sorted(os.sched_getaffinity(0))
    if settings.server_cpus is not None or settings.client_cpus is not None:
        server, client = settings.server_cpus, settings.client_cpus
    elif len(available) >= 2:
        half = max(1, len(available) // 2)
        server, client = tuple(available[:half]), tuple(available[half:])
    else:
        return Pinning(None, None, f"not pinned: only CPU {available} available; server and load generator share it")
    return Pinning(server, client, (
        f"os.sched_setaffinity in each child before exec (as taskset -c): servers and everything they start "
        f"(Ray raylet/GCS/workers/replicas included) on CPU {list(server or [])}, the load generator on CPU "
        f"{list(client or [])}; the in-process ONNX Runtime target runs on the server CPUs"
    ))


def _pin(cpus: tuple[int, ...] | None) -> Callable[[], None] | None:
    return None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextmanager
def started(launch: Launch, cpus: tuple[int, ...] | None, log_path: Path, timeout_s: float) -> Iterator[tuple[str, int]]:
    """Start a server; yields its address and session id once it said ready and its port accepts connections."""
    with log_path.open("w") as log:
        process = subprocess.Popen(
            launch.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=log_path.parent,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **launch.env}, preexec_fn=_pin(cpus), start_new_session=True,
        )
    try:
        address = _await_ready(process, launch, log_path, timeout_s)
        yield address, process.pid  # start_new_session: its pid is its session's id
    finally:
        _stop(process)


def _await_ready(process: subprocess.Popen, launch: Launch, log_path: Path, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    address = launch.address
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode} before it was ready:\n{_log_tail(log_path)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"not ready after {timeout_s:.0f} s:\n{_log_tail(log_path)}")
        pattern = READY if launch.protocol == "grpc" else HTTP_READY
        if address is None and (match := pattern.search(log_path.read_text(errors="replace"))):
            address = match["address"]
        if address is not None and _accepts(address):
            return address
        time.sleep(0.1)


def _accepts(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            pass
    # Whatever the server started in its session (its process group) goes too.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def points(settings: BenchSettings, model: BenchModel) -> list[dict]:
    rates = settings.rates if settings.rates is not None else model.rates
    return [{"mode": "closed", "concurrency": c} for c in settings.concurrency] + [{"mode": "open", "rate": r} for r in rates]


def load(address: str | None, model: BenchModel, settings: BenchSettings, cpus: tuple[int, ...] | None,
         scratch: Path, inprocess: bool = False, metadata: tuple[tuple[str, str], ...] = (),
         server_session: int | None = None, protocol: str = "grpc") -> dict:
    """Run the load generator once over every point; returns {"ready": ..., "points": [...], "error": ...}.

    `server_session`: the target's session id (its server runs in a session of its own), whose
    CPU time the load generator accounts per request."""
    plan = {
        "address": address, "protocol": protocol, "model": model.name, "inputs": str(model.inputs), "points": points(settings, model),
        "seconds": settings.seconds, "warmup_s": settings.warmup_s, "rpc_timeout_s": settings.rpc_timeout_s,
        "ready_timeout_s": settings.ready_timeout_s, "max_in_flight": settings.max_in_flight, "metadata": metadata,
        "parameters": model.parameters, "tally": "quiver.variant" if model.store else None,
        "server_session": server_session,
        "inprocess": {"model_file": str(model.file), "max_batch": settings.max_batch, "threads": len(cpus or (0,))}
        if inprocess else None,
    }
    plan_path = scratch / f"plan-{os.getpid()}-{time.monotonic_ns()}.json"
    plan_path.write_text(json.dumps(plan))
    budget = (settings.ready_timeout_s + settings.rpc_timeout_s + 60
              + len(plan["points"]) * (settings.seconds + settings.warmup_s + settings.rpc_timeout_s) * 1.5)
    result: dict = {"ready": None, "points": [], "error": None}
    module = "benchmarks.inprocess" if inprocess else "benchmarks.loadgen"
    process = subprocess.Popen(
        [sys.executable, "-m", module, str(plan_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL, cwd=ROOT, text=True, preexec_fn=_pin(cpus),
    )
    try:
        stdout, stderr = process.communicate(timeout=budget)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        result["error"] = f"load generator ran past {budget:.0f} s"
    for line in stdout.splitlines():
        record = json.loads(line)
        if "ready" in record:
            result["ready"] = record["ready"]
        else:
            result["points"].append(record)
    if process.returncode and not result["error"]:
        result["error"] = f"load generator exited with {process.returncode}: {stderr[-2000:]}"
    return result


def run_target(target_name: str, model: BenchModel, settings: BenchSettings, pins: Pinning, scratch: Path, log: Log) -> dict:
    target = TARGETS[target_name]
    record = {"target": target_name, "model": model.key, "about": target.about, "startup_s": None}
    if target.launch is None:
        return record | load(None, model, settings, pins.server_cpus, scratch, inprocess=True)
    begin = time.monotonic()
    log_path = scratch / f"{target_name}-{model.key}.log"
    try:
        launch = target.launch(model, scratch, len(pins.server_cpus or os.sched_getaffinity(0)))
        with started(launch, pins.server_cpus, log_path, settings.startup_timeout_s) as (address, session):
            record["startup_s"] = round(time.monotonic() - begin, 1)
            record |= load(address, model, settings, pins.client_cpus, scratch, metadata=launch.metadata,
                           server_session=session, protocol=launch.protocol)
            if record["error"] or not (record["ready"] or {}).get("ok"):
                record["server_log_tail"] = _log_tail(log_path)
    except (RuntimeError, OSError) as exc:
        record |= {"ready": None, "points": [], "error": f"{target_name} did not start: {exc}"}
    return record


def run(settings: BenchSettings, log: Log = print) -> dict:
    """Every model × target, in that order; returns the results (see report.py for the files)."""
    unknown = set(settings.targets) - set(TARGETS)
    if unknown:
        raise ValueError(f"unknown target(s) {sorted(unknown)}; known: {list(TARGETS)}")
    pins = pinning(settings)
    began = dt.datetime.now(dt.timezone.utc)
    results = {"meta": meta(settings, pins, began), "runs": []}
    with tempfile.TemporaryDirectory(prefix="quiver-bench-") as directory:
        scratch = Path(directory)
        for model in bench_models.prepare(list(settings.models), scratch, log):
            for name in settings.targets:
                if model.store is not None and name != "quiver":
                    continue  # only Quiver routes between a model's variants
                log(f"{model.key} × {name} ...")
                record = run_target(name, model, settings, pins, scratch, log)
                results["runs"].append(record)
                log(_one_line(record))
    results["meta"]["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    results["meta"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return results


def _one_line(record: dict) -> str:
    if record.get("error") and not record["points"]:
        return f"  {record['error'].splitlines()[0]}"
    parts = []
    for point in record["points"]:
        load_ = f"c={point['point']['concurrency']}" if point["point"]["mode"] == "closed" else f"{point['point']['rate']:g}/s"
        errors = sum(point["errors"].values())
        parts.append(f"{load_}: {point['throughput']:g} req/s p50 {point['latency_ms']['p50']} ms" + (f" ({errors} errors)" if errors else ""))
    return "  " + "; ".join(parts)


def meta(settings: BenchSettings, pins: Pinning, began: dt.datetime) -> dict:
    """The run's provenance (benchmarks/provenance.py), in the layout report.py reads."""
    return {
        "date": began.isoformat(timespec="seconds"),
        "command": provenance.command_line(),
        "machine": provenance.machine(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "pinning": asdict(pins),
        "settings": asdict(settings),
        "versions": {
            **provenance.versions(),
            "kserve_venv": _peer_versions("kserve", ("kserve", "onnxruntime", "grpcio", "protobuf")),
            "mlserver_venv": _peer_versions("mlserver", ("mlserver", "onnxruntime", "grpcio", "protobuf")),
            "pytriton_venv": _peer_versions("pytriton", ("nvidia-pytriton", "onnxruntime", "numpy")),
        },
    }


def _peer_versions(peer: str, packages: tuple[str, ...]) -> dict | None:
    python = PEER_VENVS[peer] / "bin/python"
    if not python.exists():
        return None
    code = ("import importlib.metadata as m, json, platform; "
            f"print(json.dumps({{'python': platform.python_version(), **{{p: m.version(p) for p in {list(packages)!r}}}}}))")
    try:
        # Not from the repository root, whose folders (operator/) would shadow the standard library.
        return json.loads(subprocess.run([str(python), "-c", code], cwd=PEER_VENVS[peer], capture_output=True, text=True,
                                         check=True).stdout)
    except (OSError, subprocess.CalledProcessError, json.JSONDecodeError):
        return None
