"""What one gRPC hop costs in front of a compute-bound model sharing its CPU: the floor under Quiver's router.

    python -m benchmarks.hop_cost [--model minilm-int8] [--concurrency 1,4] [--seconds 10]

Two processes on the server CPU (the first half of the CPUs, as the harness pins servers): a
backend, one grpc.aio server running the model with ONNX Runtime as every target does
(benchmarks/peers/ortmodel.py; one executor thread, as Quiver's replica), and a bare proxy, a
grpc.aio server whose handler forwards the request's bytes to the backend over one channel and
returns the answer's bytes, with no parsing and no logic. A closed loop from the other CPUs calls
the backend directly, then through the proxy, at each concurrency. Printed: throughput and each
process's CPU milliseconds per request (from /proc). The proxy's share is what any Python gRPC
hop costs on that CPU; Quiver's router (`python -m benchmarks.process_cpu`) pays it plus its own work.
Writes benchmarks/results/hop-cost-<stamp>.{json,md} (benchmarks/provenance.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from benchmarks import harness, models, provenance
from benchmarks.loadgen import request_rows, session_processes
from benchmarks.targets import PEERS, free_port

METHOD = "/hop.Hop/Call"


def _serve(port: int, handler) -> grpc.aio.Server:
    server = grpc.aio.server()
    service, method = METHOD.strip("/").split("/")
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {method: grpc.unary_unary_rpc_method_handler(handler)}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    return server


async def backend(port: int, model: Path, inputs: Path) -> None:
    sys.path.insert(0, str(PEERS))
    from ortmodel import OrtModel

    session, feeds = OrtModel(str(model)), request_rows(inputs)
    executor = ThreadPoolExecutor(max_workers=1)

    async def call(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        outputs = await asyncio.get_running_loop().run_in_executor(executor, session.run, feeds)
        return outputs[0].tobytes()

    server = _serve(port, call)
    await server.start()
    await server.wait_for_termination()


async def proxy(port: int, backend_port: int) -> None:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{backend_port}")
    forward = channel.unary_unary(METHOD)

    async def call(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await forward(request)

    server = _serve(port, call)
    await server.start()
    await server.wait_for_termination()


async def closed_loop(port: int, concurrency: int, seconds: float, body: bytes, pids: list[int]) -> tuple[int, float, list[float]]:
    """After a warm-up: requests answered, seconds elapsed, and each of `pids`' CPU seconds meanwhile."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(METHOD)
        answered = 0

        async def caller(end: float) -> None:
            nonlocal answered
            while time.perf_counter() < end:
                await call(body, timeout=10)
                answered += 1

        await asyncio.gather(*(caller(time.perf_counter() + 2.0) for _ in range(concurrency)))  # warm-up
        before, began = [_cpu_s(pid) for pid in pids], time.perf_counter()
        answered = 0
        await asyncio.gather(*(caller(began + seconds) for _ in range(concurrency)))
        return answered, time.perf_counter() - began, [_cpu_s(pid) - cpu for pid, cpu in zip(pids, before)]


def _cpu_s(pid: int) -> float:
    return session_processes(pid)[pid][1]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hop_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm-int8", help=f"one of {list(models.KEYS[:3])}")
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=provenance.RESULTS)
    args = parser.parse_args()
    run = provenance.begin()
    rows = []
    pins = harness.pinning(harness.BenchSettings())
    print(f"pinning: {pins.how}")
    with tempfile.TemporaryDirectory(prefix="quiver-hop-") as scratch:
        model = models.prepare([args.model], Path(scratch))[0]
        ports = free_port(), free_port()
        pin = (lambda: os.sched_setaffinity(0, pins.server_cpus)) if pins.server_cpus else None
        role = [sys.executable, "-m", "benchmarks.hop_cost"]
        started = [
            subprocess.Popen([*role, "--backend", str(ports[0]), str(model.file), str(model.inputs)], preexec_fn=pin, start_new_session=True),
            subprocess.Popen([*role, "--proxy", str(ports[1]), str(ports[0])], preexec_fn=pin, start_new_session=True),
        ]
        try:
            if pins.client_cpus:
                os.sched_setaffinity(0, pins.client_cpus)
            for port in ports:
                with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                    grpc.channel_ready_future(channel).result(timeout=60)
            body = b"\0" * 2048  # the size of a MiniLM request; the backend runs its own copy of the request
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                for port, path in ((ports[0], "direct"), (ports[1], "through the proxy")):
                    answered, elapsed, used = asyncio.run(closed_loop(port, concurrency, args.seconds, body, [p.pid for p in started]))
                    backend_ms, proxy_ms = (1000 * seconds / answered for seconds in used)
                    print(f"{model.key} c={concurrency} {path:18s} {answered / elapsed:7.1f} req/s   "
                          f"backend {backend_ms:6.2f} ms/req   proxy {proxy_ms:5.2f} ms/req")
                    rows.append({"model": model.key, "concurrency": concurrency, "path": path, "answered": answered,
                                 "seconds": round(elapsed, 3), "req_per_s": round(answered / elapsed, 2),
                                 "backend_cpu_ms": round(backend_ms, 3), "proxy_cpu_ms": round(proxy_ms, 3)})
        finally:
            for process in started:
                process.kill()
                process.wait()
    where = (f"backend and proxy on CPU {list(pins.server_cpus)}, load from CPU {list(pins.client_cpus)}" if pins.server_cpus
             else "not pinned")
    settings = {"model": args.model, "concurrency": args.concurrency, "seconds": args.seconds, "pinning": where}
    body = markdown(rows, settings)
    paths = provenance.write("hop-cost", run, {"settings": settings, "rows": rows}, body,
                             "What one bare grpc.aio hop costs in front of a model sharing its CPU", out=args.out)
    print(body)
    print("written:", *paths)


def markdown(rows: list[dict], settings: dict) -> str:
    lines = [
        f"{settings['model']}: a one-process grpc.aio backend running it with ONNX Runtime, called directly and through a "
        f"bare grpc.aio proxy (bytes forwarded, no parsing) ({settings['pinning']}); closed loop, {settings['seconds']:g} s "
        "per row after 2 s of warm-up; CPU ms per answered request of each process, from /proc.",
        "",
        "| model | concurrency | path | req/s | backend CPU ms per request | proxy CPU ms per request |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| {row['model']} | {row['concurrency']} | {row['path']} | {row['req_per_s']:,.1f} | "
                     f"{row['backend_cpu_ms']:.2f} | {row['proxy_cpu_ms']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--backend"]:
        asyncio.run(backend(int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])))
    elif sys.argv[1:2] == ["--proxy"]:
        asyncio.run(proxy(int(sys.argv[2]), int(sys.argv[3])))
    else:
        main()
