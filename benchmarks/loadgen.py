"""The load generator: Open Inference Protocol v2 `ModelInfer` over gRPC, closed and open loop.

    python -m benchmarks.loadgen PLAN.json      (started by benchmarks/harness.py)

Runs in a process of its own, which the harness pins to the load generator's CPUs, because
Quiver's generated `inference` messages cannot share a process with tritonclient's or
KServe's. PLAN names the target's address, the model, an `.npz` whose first row of each array
is the request, and the points to measure; each point prints one JSON line on stdout as it
finishes, so a run cut short keeps what it measured.

The request is serialized once and sent as bytes (raw_input_contents), and responses are kept
as bytes: the client costs the same against every target. The first answer of each run is
parsed and checked (every output's raw bytes match its shape and datatype).

- closed loop: CONCURRENCY callers, each sending its next request when the last answers;
- open loop: requests sent at RATE per second on a fixed schedule, whatever the answers do;
  latency counts from the scheduled send time, so a server that falls behind is charged for
  the queue it builds (no coordinated omission). At most `max_in_flight` wait at once; a send
  beyond that is counted as the error CLIENT_BACKLOG.
Each point warms up first (same load, discarded), then measures for a bounded time. Every
request has a deadline (`rpc_timeout_s`); failures are counted by gRPC status code.
`client_cpu` is the share of one CPU this process used while measuring: near 1.0 the load
generator, not the target, may be the limit. `server_cpu_ms` is the CPU time the target's whole
process session (the server and everything it started: Ray's GCS, raylet, replicas) spent per
answered request while measuring, from /proc: on a shared, noisy machine it moves far less than
throughput does, and on a one-CPU share 1000 / server_cpu_ms is the throughput ceiling.

`closed_loop` / `open_loop` take any `async () -> None` call, so other benchmarks reuse them.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


@dataclass
class Sample:
    """What one measured window produced."""

    latencies_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0
    cpu_s: float = 0.0
    sent: int = 0
    server_cpu_s: float | None = None  # the target's session, when known


def error_name(exc: BaseException) -> str:
    """A gRPC status code's name (UNAVAILABLE, ...), or the exception's type for anything else."""
    code = getattr(exc, "code", None)
    if callable(code):
        name = getattr(code(), "name", None)
        if name:
            return name
    return type(exc).__name__


def summarize(sample: Sample) -> dict:
    """Throughput (successful answers per second), latency percentiles in ms, errors by code."""
    ms = np.asarray(sample.latencies_s) * 1000
    latency = (
        {q: round(float(np.percentile(ms, p)), 3) for q, p in (("p50", 50), ("p90", 90), ("p99", 99))}
        | {"max": round(float(ms.max()), 3), "mean": round(float(ms.mean()), 3)}
        if len(ms)
        else {"p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    )
    elapsed = max(sample.elapsed_s, 1e-9)
    return {
        "requests": len(ms),
        "sent": sample.sent,
        "throughput": round(len(ms) / elapsed, 1),
        "latency_ms": latency,
        "errors": dict(sorted(sample.errors.items())),
        "elapsed_s": round(sample.elapsed_s, 3),
        "client_cpu": round(sample.cpu_s / elapsed, 3),
        "server_cpu_ms": round(1000 * sample.server_cpu_s / len(ms), 3) if sample.server_cpu_s is not None and len(ms) else None,
    }


def session_processes(session: int) -> dict[int, tuple[str, float]]:
    """pid → (command line, CPU seconds used so far: user + system) of the live processes of one session (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
            if int(fields[3]) != session:  # fields after the name: state ppid pgrp session ... utime stime
                continue
            with open(f"/proc/{entry.name}/cmdline", "rb") as cmdline:
                command = cmdline.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # gone meanwhile
            continue
        found[int(entry.name)] = (command, (int(fields[11]) + int(fields[12])) / ticks)
    return found


def session_cpu_s(session: int) -> float | None:
    """CPU seconds used so far by the live processes of one session; None when it has none."""
    processes = session_processes(session)
    return sum(seconds for _, seconds in processes.values()) if processes else None


async def closed_loop(call: Callable[[], Awaitable[object]], seconds: float, concurrency: int) -> Sample:
    """CONCURRENCY callers for SECONDS; a request started in time is waited for and counted."""
    sample = Sample()
    cpu, begin = time.process_time(), time.perf_counter()
    end = begin + seconds

    async def caller() -> None:
        while (start := time.perf_counter()) < end:
            sample.sent += 1
            try:
                await call()
            except Exception as exc:  # noqa: BLE001 - every failure is a result
                sample.errors[error_name(exc)] += 1
            else:
                sample.latencies_s.append(time.perf_counter() - start)

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    sample.elapsed_s, sample.cpu_s = time.perf_counter() - begin, time.process_time() - cpu
    return sample


async def open_loop(call: Callable[[], Awaitable[object]], rate: float, seconds: float, max_in_flight: int = 4096) -> Sample:
    """RATE requests per second for SECONDS on a fixed schedule; latency from the scheduled time."""
    sample = Sample()
    in_flight: set[asyncio.Task] = set()

    async def one(scheduled: float) -> None:
        try:
            await call()
        except Exception as exc:  # noqa: BLE001 - every failure is a result
            sample.errors[error_name(exc)] += 1
        else:
            sample.latencies_s.append(time.perf_counter() - scheduled)

    cpu, begin = time.process_time(), time.perf_counter()
    for i in range(max(1, math.floor(rate * seconds))):
        scheduled = begin + i / rate
        if (delay := scheduled - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        sample.sent += 1
        if len(in_flight) >= max_in_flight:
            sample.errors["CLIENT_BACKLOG"] += 1
            continue
        task = asyncio.create_task(one(scheduled))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.gather(*in_flight)
    # The schedule spans SECONDS; a slower server stretches the window, never a faster one shrinks it.
    sample.elapsed_s, sample.cpu_s = max(seconds, time.perf_counter() - begin), time.process_time() - cpu
    return sample


def request_rows(inputs: Path) -> dict[str, np.ndarray]:
    """The request's tensors: the first row of every array in the .npz, batch dimension kept."""
    with np.load(inputs) as arrays:
        return {name: np.ascontiguousarray(arrays[name][:1]) for name in arrays.files}


def encode_request(model: str, tensors: dict[str, np.ndarray], parameters: dict[str, object]) -> bytes:
    from quiver._proto import grpc_predict_v2_pb2 as pb

    sys.path.insert(0, str(Path(__file__).parent / "peers"))
    from ortmodel import datatype

    message = pb.ModelInferRequest(
        model_name=model,
        inputs=[
            pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype(array), shape=array.shape)
            for name, array in tensors.items()
        ],
        raw_input_contents=[array.tobytes() for array in tensors.values()],
    )
    for key, value in parameters.items():
        if isinstance(value, bool):
            message.parameters[key].bool_param = value
        elif isinstance(value, int):
            message.parameters[key].int64_param = value
        else:
            message.parameters[key].string_param = str(value)
    return message.SerializeToString()


def check_response(raw: bytes) -> dict:
    """The first answer, parsed: each output's name, datatype and shape; raises if bytes don't fit."""
    from quiver._proto import grpc_predict_v2_pb2 as pb

    sys.path.insert(0, str(Path(__file__).parent / "peers"))
    from ortmodel import DTYPES

    response = pb.ModelInferResponse.FromString(raw)
    if len(response.raw_output_contents) != len(response.outputs) or not response.outputs:
        raise ValueError(f"{len(response.outputs)} outputs but {len(response.raw_output_contents)} raw_output_contents")
    outputs = []
    for tensor, contents in zip(response.outputs, response.raw_output_contents):
        expected = math.prod(tensor.shape) * DTYPES[tensor.datatype].itemsize
        if len(contents) != expected:
            raise ValueError(f"output {tensor.name!r}: {len(contents)} bytes for shape {list(tensor.shape)} {tensor.datatype}")
        outputs.append({"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)})
    return {"outputs": outputs}


async def run_grpc(plan: dict, emit: Callable[[dict], None]) -> None:
    import grpc

    payload = encode_request(plan["model"], request_rows(Path(plan["inputs"])), plan.get("parameters", {}))
    timeout = plan["rpc_timeout_s"]
    metadata = tuple(tuple(pair) for pair in plan.get("metadata", ())) or None
    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(plan["address"], options=options) as channel:
        # No serializers: the request goes as the bytes encoded once, the answer comes back as bytes.
        infer = channel.unary_unary(MODEL_INFER)

        async def call() -> bytes:
            return await infer(payload, timeout=timeout, metadata=metadata)

        emit({"ready": await wait_ready(call, plan["ready_timeout_s"])})
        tally_key, tally = plan.get("tally"), Counter()
        if tally_key:  # which value of one response parameter answered (e.g. quiver.variant)
            from quiver._proto import grpc_predict_v2_pb2 as pb

            async def counted() -> bytes:
                answer = await call()
                tally[pb.ModelInferResponse.FromString(answer).parameters[tally_key].string_param] += 1
                return answer

        for point in plan["points"]:
            sample = await measure(counted if tally_key else call, point, plan, on_warm=tally.clear)
            emit({"point": point, **summarize(sample), **({"tally": dict(tally)} if tally_key else {})})


async def wait_ready(call: Callable[[], Awaitable[bytes]], timeout_s: float) -> dict:
    """Send until one request succeeds (the model may still be loading); the first answer is checked."""
    begin = time.perf_counter()
    last = "no attempt"
    while True:
        try:
            answer = await call()
        except Exception as exc:  # noqa: BLE001
            details = exc.details() if callable(getattr(exc, "details", None)) else exc
            last = f"{error_name(exc)}: {details}"
        else:
            try:
                return {"ok": True, "after_s": round(time.perf_counter() - begin, 3), **check_response(answer)}
            except Exception as exc:  # noqa: BLE001 - a malformed answer is a finding, not a crash
                return {"ok": False, "after_s": round(time.perf_counter() - begin, 3), "error": f"bad response: {exc}"}
        if time.perf_counter() - begin > timeout_s:
            return {"ok": False, "after_s": round(time.perf_counter() - begin, 3), "error": last}
        await asyncio.sleep(0.2)


async def measure(call: Callable[[], Awaitable[object]], point: dict, plan: dict, on_warm: Callable[[], None]) -> Sample:
    session = plan.get("server_session")
    if point["mode"] == "closed":
        await closed_loop(call, plan["warmup_s"], point["concurrency"])
        on_warm()
        before = session_cpu_s(session) if session else None
        sample = await closed_loop(call, plan["seconds"], point["concurrency"])
    else:
        await open_loop(call, point["rate"], plan["warmup_s"], plan["max_in_flight"])
        on_warm()
        before = session_cpu_s(session) if session else None
        sample = await open_loop(call, point["rate"], plan["seconds"], plan["max_in_flight"])
    after = session_cpu_s(session) if session else None
    if before is not None and after is not None:
        sample.server_cpu_s = after - before
    return sample


def emit(line: dict) -> None:
    """One JSON line on stdout, which the harness reads as it comes."""
    print(json.dumps(line), flush=True)


def main() -> None:
    asyncio.run(run_grpc(json.loads(Path(sys.argv[1]).read_text()), emit))


if __name__ == "__main__":
    main()
