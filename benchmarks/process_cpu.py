"""Where Quiver's server spends its CPU, process by process: idle, and under closed-loop load.

    python -m benchmarks.process_cpu [--models example,minilm-int8] [--concurrency 0,1,4] [--seconds 10]

Starts `quiver serve` as the harness does (benchmarks/targets.py; the server on the first half
of the CPUs, this process, which sends the load, on the rest), then for each concurrency counts
the CPU time of every process of the server's session over the window, from /proc. Concurrency
0 sends nothing: what the stack costs at rest. Ray's processes are named by their titles
(`ray::ServeReplica:APP`, `ray::ServeController`, `gcs_server`, `raylet`, ...).

On a one-CPU share everything here competes with ONNX Runtime for the same core, so a
compute-bound model loses what the other processes use: this is the breakdown behind the
MiniLM rows of the peer comparison (benchmarks/NOTES.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from collections import defaultdict
from pathlib import Path

from benchmarks import harness, models
from benchmarks.loadgen import MODEL_INFER, closed_loop, encode_request, request_rows, session_processes
from benchmarks.targets import TARGETS

# Processes that carry no Ray title, by a part of their command line.
_PLAIN_NAMES = ("quiver serve", "gcs_server", "raylet", "log_monitor", "dashboard/agent", "dashboard.py", "monitor.py")


def process_cpu_s(session: int) -> dict[int, tuple[str, float]]:
    """pid → (name, CPU seconds so far) for the live processes of one session."""
    return {pid: (_name(command), seconds) for pid, (command, seconds) in session_processes(session).items()}


def _name(command: str) -> str:
    if command.startswith("ray::"):
        return command.split()[0]
    return next((name for name in _PLAIN_NAMES if name in command), command[:60])


def used_between(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds per process name between two readings (processes alive at both)."""
    used: dict[str, float] = defaultdict(float)
    for pid, (name, seconds) in after.items():
        if pid in before:
            used[name] += seconds - before[pid][1]
    return dict(used)


async def measure(address: str, model: models.BenchModel, session: int, concurrency: int, seconds: float) -> tuple[dict[str, float], int, float]:
    """(CPU seconds per process, requests answered, elapsed seconds) over one window."""
    import grpc

    payload = encode_request(model.name, request_rows(model.inputs), model.parameters)
    async with grpc.aio.insecure_channel(address) as channel:
        infer = channel.unary_unary(MODEL_INFER)

        async def call() -> None:
            await infer(payload, timeout=10)

        if concurrency:
            await closed_loop(call, 2.0, concurrency)  # warm-up
        before = process_cpu_s(session)
        if concurrency:
            sample = await closed_loop(call, seconds, concurrency)
            answered, elapsed = len(sample.latencies_s), sample.elapsed_s
        else:
            await asyncio.sleep(seconds)
            answered, elapsed = 0, seconds
        return used_between(before, process_cpu_s(session)), answered, elapsed


def report(model: str, concurrency: int, used: dict[str, float], answered: int, elapsed: float) -> None:
    load = f"closed loop, concurrency {concurrency}: {answered / elapsed:.1f} req/s" if concurrency else "idle"
    print(f"\n{model}, {load}, {elapsed:.0f} s\n  % of one CPU   ms per request   process")
    rows = sorted(((seconds, name) for name, seconds in used.items() if seconds > 0), reverse=True)
    for seconds, name in [*rows, (sum(used.values()), "all")]:
        per_request = f"{1000 * seconds / answered:8.3f}" if answered else "       –"
        print(f"  {100 * seconds / elapsed:8.2f}        {per_request}         {name}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.process_cpu", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="example,minilm-int8", help=f"comma-separated, of {list(models.KEYS)}")
    parser.add_argument("--concurrency", default="0,1,4", help="windows to measure; 0: idle")
    parser.add_argument("--seconds", type=float, default=10.0, help="per window")
    args = parser.parse_args()
    pins = harness.pinning(harness.BenchSettings())
    if pins.client_cpus:
        os.sched_setaffinity(0, pins.client_cpus)
    print(f"pinning: {pins.how}")
    with tempfile.TemporaryDirectory(prefix="quiver-cpu-") as scratch:
        for model in models.prepare(args.models.split(","), Path(scratch)):
            launch = TARGETS["quiver"].launch(model, Path(scratch), len(pins.server_cpus or os.sched_getaffinity(0)))
            log = Path(scratch) / f"{model.key}.log"
            with harness.started(launch, pins.server_cpus, log, timeout_s=180) as (address, session):
                for concurrency in (int(c) for c in args.concurrency.split(",")):
                    report(model.key, concurrency, *asyncio.run(measure(address, model, session, concurrency, args.seconds)))


if __name__ == "__main__":
    main()
