"""The load generator: Open Inference Protocol v2 inference over gRPC or HTTP, closed and open loop.

    python -m benchmarks.loadgen PLAN.json      (started by benchmarks/harness.py)

Runs in a process of its own, which the harness pins to the load generator's CPUs, because
Quiver's generated `inference` messages cannot share a process with tritonclient's or
KServe's. PLAN names the target's address, the model, an `.npz` whose first row of each array
is the request, and the points to measure; each point prints one JSON line on stdout as it
finishes, so a run cut short keeps what it measured.

PLAN's `protocol` picks the transport, the rest is shared:
- `grpc`: `ModelInfer` on one grpc.aio channel, inputs as raw_input_contents;
- `http`: `POST /v2/models/NAME/infer` with a JSON body (`data` lists), aiohttp, one pooled
  keep-alive connection per caller;
- `http-binary`: the same with Triton's binary tensor data extension: inputs as raw bytes after
  the JSON (`Inference-Header-Content-Length`), outputs asked for as binary (`binary_data_output`).
The request is encoded once and sent as bytes, and responses are kept as bytes: the client
costs the same against every target of one protocol. The first answer of each run is parsed and
checked (every output's data fits its shape and datatype).

- closed loop: CONCURRENCY callers, each sending its next request when the last answers;
- open loop: requests sent at RATE per second on a fixed schedule, whatever the answers do;
  latency counts from the scheduled send time, so a server that falls behind is charged for
  the queue it builds (no coordinated omission). At most `max_in_flight` wait at once; a send
  beyond that is counted as the error CLIENT_BACKLOG.
Each point warms up first (same load, discarded), then measures for a bounded time. Every
request has a deadline (`rpc_timeout_s`); failures are counted by gRPC status code, or
HTTP_<status> for an HTTP answer other than 200.
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
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
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
    """A gRPC status code's name (UNAVAILABLE, ...), HTTP_<status>, or the exception's type for anything else."""
    if isinstance(status := getattr(exc, "status", None), int):  # aiohttp.ClientResponseError
        return f"HTTP_{status}"
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


def _ortmodel():
    """benchmarks/peers/ortmodel.py, which the peers import by that name (they run from that folder)."""
    sys.path.insert(0, str(Path(__file__).parent / "peers"))
    import ortmodel

    return ortmodel


def encode_request(model: str, tensors: dict[str, np.ndarray], parameters: dict[str, object]) -> bytes:
    from quiver._proto import grpc_predict_v2_pb2 as pb

    datatype = _ortmodel().datatype
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
    """The first gRPC answer, parsed: each output's name, datatype and shape; raises if bytes don't fit."""
    from quiver._proto import grpc_predict_v2_pb2 as pb

    dtypes = _ortmodel().DTYPES
    response = pb.ModelInferResponse.FromString(raw)
    if len(response.raw_output_contents) != len(response.outputs) or not response.outputs:
        raise ValueError(f"{len(response.outputs)} outputs but {len(response.raw_output_contents)} raw_output_contents")
    outputs = []
    for tensor, contents in zip(response.outputs, response.raw_output_contents):
        expected = math.prod(tensor.shape) * dtypes[tensor.datatype].itemsize
        if len(contents) != expected:
            raise ValueError(f"output {tensor.name!r}: {len(contents)} bytes for shape {list(tensor.shape)} {tensor.datatype}")
        outputs.append({"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)})
    return {"outputs": outputs}


HEADER_LENGTH = "Inference-Header-Content-Length"  # Triton's binary tensor data extension
HttpAnswer = tuple[int | None, bytes]  # (the JSON header's length when binary data follows it, the whole body)


def encode_http(tensors: dict[str, np.ndarray], parameters: dict[str, object], binary: bool) -> tuple[bytes, dict[str, str]]:
    """A v2 REST infer body and its headers: JSON `data` lists, or JSON then each input's raw bytes."""
    datatype = _ortmodel().datatype
    inputs = [{"name": name, "shape": list(array.shape), "datatype": datatype(array)} for name, array in tensors.items()]
    if not binary:
        for spec, array in zip(inputs, tensors.values()):
            spec["data"] = array.ravel().tolist()
        body = {"inputs": inputs, **({"parameters": parameters} if parameters else {})}
        return json.dumps(body).encode(), {"Content-Type": "application/json"}
    for spec, array in zip(inputs, tensors.values()):
        spec["parameters"] = {"binary_data_size": array.nbytes}
    header = json.dumps({"inputs": inputs, "parameters": {**parameters, "binary_data_output": True}}).encode()
    return (header + b"".join(array.tobytes() for array in tensors.values()),
            {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))})


def _http_header(answer: HttpAnswer) -> tuple[dict, bytes]:
    length, raw = answer
    return (json.loads(raw[:length]), raw[length:]) if length is not None else (json.loads(raw), b"")


def check_http_response(answer: HttpAnswer) -> dict:
    """The first HTTP answer, parsed: each output's name, datatype and shape; raises if its data don't fit."""
    dtypes = _ortmodel().DTYPES
    header, binary = _http_header(answer)
    if not header.get("outputs"):
        raise ValueError(f"no outputs in {header!r:.200}")
    outputs, offset = [], 0
    for tensor in header["outputs"]:
        count = math.prod(tensor["shape"])
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if size != count * dtypes[tensor["datatype"]].itemsize or offset + size > len(binary):
                raise ValueError(f"output {tensor['name']!r}: {size} binary bytes for shape {tensor['shape']} {tensor['datatype']}")
            offset += size
        elif np.asarray(tensor["data"]).size != count:
            raise ValueError(f"output {tensor['name']!r}: {np.asarray(tensor['data']).size} values for shape {tensor['shape']}")
        outputs.append({"name": tensor["name"], "datatype": tensor["datatype"], "shape": list(tensor["shape"])})
    if offset != len(binary):
        raise ValueError(f"{len(binary) - offset} binary bytes no output claims")
    return {"outputs": outputs}


@dataclass(frozen=True)
class Transport:
    """One protocol's request, sent as encoded once; how its first answer is checked and a response parameter read."""

    call: Callable[[], Awaitable[object]]
    check: Callable[[object], dict]
    parameter: Callable[[object, str], str]


@asynccontextmanager
async def grpc_transport(plan: dict) -> AsyncIterator[Transport]:
    import grpc

    from quiver._proto import grpc_predict_v2_pb2 as pb

    payload = encode_request(plan["model"], request_rows(Path(plan["inputs"])), plan.get("parameters", {}))
    timeout = plan["rpc_timeout_s"]
    metadata = tuple(tuple(pair) for pair in plan.get("metadata", ())) or None
    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(plan["address"], options=options) as channel:
        # No serializers: the request goes as the bytes encoded once, the answer comes back as bytes.
        infer = channel.unary_unary(MODEL_INFER)

        async def call() -> bytes:
            return await infer(payload, timeout=timeout, metadata=metadata)

        yield Transport(call, check_response,
                        lambda answer, key: pb.ModelInferResponse.FromString(answer).parameters[key].string_param)


@asynccontextmanager
async def http_transport(plan: dict) -> AsyncIterator[Transport]:
    import aiohttp

    body, headers = encode_http(request_rows(Path(plan["inputs"])), plan.get("parameters", {}),
                                binary=plan["protocol"] == "http-binary")
    headers |= dict(plan.get("metadata", ()))
    url = f"http://{plan['address']}/v2/models/{plan['model']}/infer"
    # limit=0: no cap on the pool, so each concurrent caller keeps a keep-alive connection of its own
    # (HTTP/1.1 carries one request at a time per connection).
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=plan["rpc_timeout_s"])) as session:

        async def call() -> HttpAnswer:
            async with session.post(url, data=body, headers=headers) as response:
                raw = await response.read()
                if response.status != 200:
                    raise aiohttp.ClientResponseError(response.request_info, (), status=response.status,
                                                      message=raw[:300].decode(errors="replace"))
                length = response.headers.get(HEADER_LENGTH)
                return (int(length) if length else None, raw)

        yield Transport(call, check_http_response,
                        lambda answer, key: str((_http_header(answer)[0].get("parameters") or {}).get(key, "")))


TRANSPORTS = {"grpc": grpc_transport, "http": http_transport, "http-binary": http_transport}


async def run(plan: dict, emit: Callable[[dict], None]) -> None:
    async with TRANSPORTS[plan.get("protocol", "grpc")](plan) as transport:
        emit({"ready": await wait_ready(transport.call, plan["ready_timeout_s"], transport.check)})
        tally_key, tally = plan.get("tally"), Counter()
        if tally_key:  # which value of one response parameter answered (e.g. quiver.variant)

            async def counted() -> object:
                answer = await transport.call()
                tally[transport.parameter(answer, tally_key)] += 1
                return answer

        for point in plan["points"]:
            sample = await measure(counted if tally_key else transport.call, point, plan, on_warm=tally.clear)
            emit({"point": point, **summarize(sample), **({"tally": dict(tally)} if tally_key else {})})


async def wait_ready(call: Callable[[], Awaitable[object]], timeout_s: float,
                     check: Callable[[object], dict] = check_response) -> dict:
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
                return {"ok": True, "after_s": round(time.perf_counter() - begin, 3), **check(answer)}
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
    asyncio.run(run(json.loads(Path(sys.argv[1]).read_text()), emit))


if __name__ == "__main__":
    main()
