"""Where Quiver's server spends its CPU, process by process, and a request's time, stage by stage.

    python -m benchmarks.process_cpu [--models example,minilm-int8] [--concurrency 0,1,4] [--seconds 10]
                                     [--dispatch direct,serve-handle]

Starts `quiver serve` as the harness does (benchmarks/targets.py; the server on the first half
of the CPUs, this process, which sends the load, on the rest), then for each concurrency counts
the CPU time of every process of the server's session over the window, from /proc. Concurrency
0 sends nothing: what the stack costs at rest. Ray's processes are named by their titles
(`ray::ServeReplica:APP`, `ray::ServeController`, `gcs_server`, `raylet`, ...).

Under load it also splits the mean latency the client saw, from the router's metrics over the
same window: ONNX Runtime in the replica (the whole run of each request's batch), waiting in the
replica for it, and the rest (the client's and the router's gRPC, the router's work and, above
concurrency 1, its queue, the hop to the replica and back).

`--dispatch serve-handle` serves with `--no-direct` (every call through Serve's DeploymentHandle,
not the replica's data plane); at concurrency 1 each call carries one request, so that window is
what Serve's per-call path costs per request.

On a one-CPU share everything here competes with ONNX Runtime for the same core, so a
compute-bound model loses what the other processes use: this is the breakdown behind the
MiniLM rows of the peer comparison (benchmarks/NOTES.md).

Writes benchmarks/results/process-cpu-<stamp>.{json,md} (benchmarks/provenance.py): per model, each
process's share of one CPU and CPU milliseconds per request in each window, and the latency split.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from benchmarks import harness, models, provenance
from benchmarks.loadgen import MODEL_INFER, closed_loop, encode_request, request_rows, session_processes
from benchmarks.targets import TARGETS, free_port

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


@dataclass(frozen=True)
class Window:
    """One measured window: CPU seconds per process, answers, and seconds summed over the answers."""

    cpu_s: dict[str, float]
    answered: int
    elapsed_s: float
    latency_s: float = 0.0  # as the client saw it
    replica_s: dict[str, float] = field(default_factory=dict)  # the router's metrics: queue, compute


def replica_seconds(metrics_url: str) -> dict[str, float]:
    """Seconds the replicas spent queueing and computing so far, summed over every answered request."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    wanted = {"quiver_replica_queue_seconds_sum": "queue", "quiver_replica_compute_seconds_sum": "compute"}
    spent = dict.fromkeys(wanted.values(), 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                spent[wanted[sample.name]] += sample.value
    return spent


async def measure(address: str, metrics_url: str, model: models.BenchModel, session: int, concurrency: int, seconds: float) -> Window:
    """One window: `seconds` at rest (concurrency 0), or of closed-loop load after a 2 s warm-up."""
    import grpc

    payload = encode_request(model.name, request_rows(model.inputs), model.parameters)
    async with grpc.aio.insecure_channel(address) as channel:
        infer = channel.unary_unary(MODEL_INFER)

        async def call() -> None:
            await infer(payload, timeout=10)

        if not concurrency:
            before = process_cpu_s(session)
            await asyncio.sleep(seconds)
            return Window(used_between(before, process_cpu_s(session)), 0, seconds)
        await closed_loop(call, 2.0, concurrency)  # warm-up
        before, spent_before = process_cpu_s(session), replica_seconds(metrics_url)
        sample = await closed_loop(call, seconds, concurrency)
        used, spent = used_between(before, process_cpu_s(session)), replica_seconds(metrics_url)
        # Both readings cover the same requests: each loop waits for every request it started, and
        # the router records a request's metrics before it answers.
        return Window(used, len(sample.latencies_s), sample.elapsed_s, sum(sample.latencies_s),
                      {stage: spent[stage] - spent_before[stage] for stage in spent})


def report(model: str, concurrency: int, window: Window) -> None:
    answered, elapsed = window.answered, window.elapsed_s
    load = f"closed loop, concurrency {concurrency}: {answered / elapsed:.1f} req/s" if concurrency else "idle"
    print(f"\n{model}, {load}, {elapsed:.0f} s\n  % of one CPU   ms per request   process")
    rows = sorted(((seconds, name) for name, seconds in window.cpu_s.items() if seconds > 0), reverse=True)
    for seconds, name in [*rows, (sum(window.cpu_s.values()), "all")]:
        per_request = f"{1000 * seconds / answered:8.3f}" if answered else "       –"
        print(f"  {100 * seconds / elapsed:8.2f}        {per_request}         {name}")
    if answered:
        mean = {stage: 1000 * seconds / answered for stage, seconds in window.replica_s.items()}
        latency = 1000 * window.latency_s / answered
        print(f"  mean latency {latency:.2f} ms: ONNX Runtime {mean['compute']:.2f}, waiting in the replica "
              f"{mean['queue']:.2f}, the rest {latency - mean['compute'] - mean['queue']:.2f}")


# Processes of the stack that are neither the router nor a replica: Ray's, and the replica directory.
ROUTER = "quiver serve"
REPLICA = "ray::ServeReplica"


DISPATCH = {"direct": "the replicas' data planes", "serve-handle": "Serve's handles (`--no-direct`)"}


def window_row(model: str, dispatch: str, concurrency: int, window: Window) -> dict:
    answered, elapsed = window.answered, window.elapsed_s
    row = {
        "model": model, "dispatch": dispatch, "concurrency": concurrency, "seconds": round(elapsed, 3), "answered": answered,
        "req_per_s": round(answered / elapsed, 2) if answered else 0.0,
        "cpu_s": {name: round(seconds, 4) for name, seconds in sorted(window.cpu_s.items())},
    }
    if answered:
        mean = {stage: 1000 * seconds / answered for stage, seconds in window.replica_s.items()}
        latency = 1000 * window.latency_s / answered
        row["latency_ms"] = {"client_mean": round(latency, 3), "onnx_runtime": round(mean["compute"], 3),
                             "waiting_in_replica": round(mean["queue"], 3),
                             "rest": round(latency - mean["compute"] - mean["queue"], 3)}
    return row


def _groups(cpu_s: dict[str, float]) -> dict[str, float]:
    """The summary rows: all processes, and those that are neither the router nor a replica."""
    others = sum(s for name, s in cpu_s.items() if name != ROUTER and not name.startswith(REPLICA))
    return {"all": sum(cpu_s.values()), "all but the router and the replica": others}


def markdown(rows: list[dict], settings: dict) -> str:
    lines = [
        f"`quiver serve` as the harness starts it ({settings['pinning']}); closed loop of batch-1 `ModelInfer`, "
        f"{settings['seconds']:g} s per window after 2 s of warm-up (concurrency 0: nothing sent). CPU time of "
        "every process of the server's session over the window, from /proc: % of one CPU, and CPU ms per "
        "answered request.",
    ]
    for model, dispatch in dict.fromkeys((row["model"], row["dispatch"]) for row in rows):
        windows = [row for row in rows if (row["model"], row["dispatch"]) == (model, dispatch)]
        head = ["process"]
        for w in windows:
            c = w["concurrency"]
            head += ["idle: % of one CPU"] if not c else [f"c={c} ({w['req_per_s']:,.1f} req/s): % of one CPU", f"c={c}: ms per request"]
        names = sorted({name for w in windows for name, s in w["cpu_s"].items() if s > 0},
                       key=lambda name: -max(w["cpu_s"].get(name, 0.0) / w["seconds"] for w in windows))
        lines += ["", f"**{model}**, calls to the replica on {DISPATCH[dispatch]}", "", "| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
        summaries = [_groups(w["cpu_s"]) for w in windows]
        for name in [*names, "all", "all but the router and the replica"]:
            cells = [name if name in summaries[0] else "`" + name.replace("|", "\\|") + "`"]
            for w, summary in zip(windows, summaries):
                seconds = summary[name] if name in summary else w["cpu_s"].get(name, 0.0)
                cells.append(f"{100 * seconds / w['seconds']:.2f}")
                if w["concurrency"]:
                    cells.append(f"{1000 * seconds / w['answered']:.3f}" if w["answered"] else "–")
            lines.append("| " + " | ".join(cells) + " |")
    split = [row for row in rows if row.get("latency_ms")]
    if split:
        lines += ["", "Mean latency as the client saw it, split by the router's metrics over the same window (ms per request): "
                  "ONNX Runtime in the replica (the whole run of each request's batch), waiting in the replica, and the "
                  "rest (gRPC both ways, the router, its queue above concurrency 1, the hop to the replica and back).", "",
                  "| model | calls on | concurrency | req/s | client mean | ONNX Runtime in the replica | waiting in the replica | the rest |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for row in split:
            ms = row["latency_ms"]
            lines.append(f"| {row['model']} | {row['dispatch']} | {row['concurrency']} | {row['req_per_s']:,.1f} | {ms['client_mean']:.2f} | "
                         f"{ms['onnx_runtime']:.2f} | {ms['waiting_in_replica']:.2f} | {ms['rest']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.process_cpu", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="example,minilm-int8", help=f"comma-separated, of {list(models.KEYS)}")
    parser.add_argument("--concurrency", default="0,1,4", help="windows to measure; 0: idle")
    parser.add_argument("--seconds", type=float, default=10.0, help="per window")
    parser.add_argument("--dispatch", default="direct", help=f"comma-separated, of {list(DISPATCH)}: a server each")
    parser.add_argument("--out", type=Path, default=provenance.RESULTS)
    args = parser.parse_args()
    run = provenance.begin()
    pins = harness.pinning(harness.BenchSettings())
    if pins.client_cpus:
        os.sched_setaffinity(0, pins.client_cpus)
    print(f"pinning: {pins.how}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="quiver-cpu-") as scratch:
        for model in models.prepare(args.models.split(","), Path(scratch)):
            for dispatch in args.dispatch.split(","):
                if dispatch not in DISPATCH:
                    parser.error(f"--dispatch {dispatch}: one of {list(DISPATCH)}")
                launch = TARGETS["quiver"].launch(model, Path(scratch), len(pins.server_cpus or os.sched_getaffinity(0)))
                metrics_port = free_port()  # the harness turns the router's metrics off; here they are read
                extra = ["--no-direct"] if dispatch == "serve-handle" else []
                launch = replace(launch, command=[*launch.command, "--metrics-port", str(metrics_port), *extra])
                metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
                log = Path(scratch) / f"{model.key}-{dispatch}.log"
                with harness.started(launch, pins.server_cpus, log, timeout_s=180) as (address, session):
                    for concurrency in (int(c) for c in args.concurrency.split(",")):
                        window = asyncio.run(measure(address, metrics_url, model, session, concurrency, args.seconds))
                        report(f"{model.key} ({dispatch})", concurrency, window)
                        rows.append(window_row(model.key, dispatch, concurrency, window))
    where = (f"server on CPU {list(pins.server_cpus)}, load from CPU {list(pins.client_cpus)}" if pins.server_cpus
             else "not pinned")
    settings = {"models": args.models, "dispatch": args.dispatch, "concurrency": args.concurrency, "seconds": args.seconds,
                "pinning": where}
    body = markdown(rows, settings)
    paths = provenance.write("process-cpu", run, {"settings": settings, "rows": rows}, body,
                             "Where the server's CPU goes, process by process, and a request's time", out=args.out)
    print(body)
    print("written:", *paths)


if __name__ == "__main__":
    main()
