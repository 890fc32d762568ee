"""Soak: steady load on `quiver serve` for minutes; memory and latency over time must stay flat.

    python -m benchmarks.soak --minutes 10 [--rate 150] [--window-s 30] [--bad-every 100]

Starts `quiver serve` (the bundled example model) and sends ModelInfer at a fixed rate (open
loop, benchmarks/loadgen.py: latency counted from the scheduled send time), one request in
`--bad-every` naming an input the model does not have (INVALID_ARGUMENT: the error path runs
too). Every window it records answers by status, latency p50/p99, and the memory of the router
process and of the replica (RSS), and the router's open file descriptors and threads. At the
end: growth per minute (least squares over the windows after the first two, which include
warm-up), first vs last window, written to benchmarks/results/soak-<date>.{json,md}
(benchmarks/provenance.py).
Not run by CI (minutes long); loopback only, bounded by --minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from benchmarks import provenance
from benchmarks.loadgen import open_loop, summarize

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.serverproc import quiver_serve  # noqa: E402 (the launcher the tests use)


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def replicas_under(server_pid: int) -> list[int]:
    """The Serve replica processes this server's local Ray instance runs."""
    rows = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True, check=True).stdout
    parent, args = {}, {}
    for row in rows.splitlines():
        pid, ppid, *command = row.split()
        parent[int(pid)], args[int(pid)] = int(ppid), " ".join(command)

    def under(pid: int) -> bool:
        while pid > 1:
            pid = parent.get(pid, 0)
            if pid == server_pid:
                return True
        return False

    return [pid for pid, command in args.items() if "ServeReplica:" in command and under(pid)]


def slope_per_minute(times_s: list[float], values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    return round(float(np.polyfit(np.asarray(times_s) / 60, values, 1)[0]), 2)


async def soak(address: str, server_pid: int, minutes: float, rate: float, window_s: float, bad_every: int) -> list[dict]:
    good = pb.ModelInferRequest(
        model_name="example",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 64])],
        raw_input_contents=[np.ones((1, 64), np.float32).tobytes()],
    )
    bad = pb.ModelInferRequest()
    bad.CopyFrom(good)
    bad.inputs[0].name = "not-an-input"
    windows = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        count = 0

        async def call() -> None:
            nonlocal count
            count += 1
            request = bad if bad_every and count % bad_every == 0 else good
            try:
                await stub.ModelInfer(request, timeout=10)
            except grpc.aio.AioRpcError as exc:
                if exc.code() is not grpc.StatusCode.INVALID_ARGUMENT or request is not bad:
                    raise
                # the expected answer to a bad request: counted apart, not as a failure
                windows_bad[0] += 1

        begin = time.monotonic()
        while time.monotonic() - begin < minutes * 60:
            windows_bad = [0]
            sample = await open_loop(call, rate, window_s)
            numbers = summarize(sample)
            replicas = replicas_under(server_pid)
            window = {
                "t_s": round(time.monotonic() - begin, 1),
                "sent": sample.sent,
                "ok": numbers["requests"] - windows_bad[0],
                "invalid_argument_expected": windows_bad[0],
                "errors": numbers["errors"],
                "p50_ms": numbers["latency_ms"]["p50"],
                "p99_ms": numbers["latency_ms"]["p99"],
                "router_rss_mib": rss_mib(server_pid),
                "replica_rss_mib": sum(filter(None, (rss_mib(pid) for pid in replicas))) if replicas else None,
                "router_fds": len(os.listdir(f"/proc/{server_pid}/fd")),
                "load_1m": round(os.getloadavg()[0], 1),  # this machine is shared: its load explains latency
                "router_threads": int(next(line.split()[1] for line in Path(f"/proc/{server_pid}/status").read_text().splitlines() if line.startswith("Threads:"))),
            }
            windows.append(window)
            print(json.dumps(window), flush=True)
    return windows


def summary(windows: list[dict]) -> dict:
    steady = windows[2:] if len(windows) > 4 else windows
    times = [w["t_s"] for w in steady]
    out: dict = {
        "windows": len(windows),
        "sent": sum(w["sent"] for w in windows),
        "ok": sum(w["ok"] for w in windows),
        "expected_invalid_argument": sum(w["invalid_argument_expected"] for w in windows),
        "errors": {k: sum(w["errors"].get(k, 0) for w in windows) for k in sorted({k for w in windows for k in w["errors"]})},
    }
    for key in ("router_rss_mib", "replica_rss_mib", "router_fds", "router_threads", "p50_ms", "p99_ms"):
        values = [w[key] for w in steady if w[key] is not None]
        if values:
            out[key] = {"first": values[0], "last": values[-1], "min": min(values), "max": max(values),
                        "per_minute": slope_per_minute(times[: len(values)], values)}
    return out


def markdown(windows: list[dict], total: dict) -> str:
    lines = [
        f"Sent {total['sent']}, answered OK {total['ok']}, expected INVALID_ARGUMENT (bad requests) "
        f"{total['expected_invalid_argument']}, other failures {total['errors'] or 'none'}.", "",
        f"Warnings and errors in the server's output: {total.get('router_log_lines', len(total['router_log']))}"
        + ("; the first: " + "; ".join(f"`{line[:160]}`" for line in total["router_log"][:5]) if total["router_log"] else "") + ".", "",
        "| quantity (after the first two windows) | first | last | min | max | change per minute |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key in ("router_rss_mib", "replica_rss_mib", "router_fds", "router_threads", "p50_ms", "p99_ms"):
        if key in total:
            v = total[key]
            lines.append(f"| {key} | {v['first']} | {v['last']} | {v['min']} | {v['max']} | {v['per_minute']} |")
    lines += ["", "| t (s) | sent | OK | errors | p50 ms | p99 ms | router RSS MiB | replica RSS MiB | fds | threads | load (1 min) |",
              "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for w in windows:
        lines.append(f"| {w['t_s']} | {w['sent']} | {w['ok']} | {w['errors'] or ''} | {w['p50_ms']} | {w['p99_ms']} | "
                     f"{w['router_rss_mib']} | {w['replica_rss_mib']} | {w['router_fds']} | {w['router_threads']} | {w['load_1m']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=150.0, help="requests per second (open loop)")
    parser.add_argument("--window-s", type=float, default=30.0)
    parser.add_argument("--bad-every", type=int, default=100, help="one request in this many is invalid (0: none)")
    parser.add_argument("--out", type=Path, default=provenance.RESULTS)
    args = parser.parse_args()
    run = provenance.begin()
    with quiver_serve("--num-cpus", "2") as server:
        windows = asyncio.run(soak(server.address, server.process.pid, args.minutes, args.rate, args.window_s, args.bad_every))
    total = summary(windows)
    # What the router said meanwhile (its start-up warnings about plaintext and tokens, and its drain, apart).
    said = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in server.output if " WARNING " in line or " ERROR " in line]
    said = [line for line in said if not any(usual in line for usual in ("plaintext", "--token-file", "shutting down"))]
    total["router_log_lines"], total["router_log"] = len(said), said[:5]
    settings = {"minutes": args.minutes, "rate": args.rate, "window_s": args.window_s, "bad_every": args.bad_every}
    paths = provenance.write("soak", run, {"settings": settings, "summary": total, "windows": windows}, markdown(windows, total),
                             f"Soak: {args.minutes:g} min at {args.rate:g} req/s", out=args.out)
    print(json.dumps(total, indent=1))
    print("written:", *paths)


if __name__ == "__main__":
    main()
