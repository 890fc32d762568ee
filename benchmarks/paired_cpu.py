"""Two commits of Quiver side by side: the server CPU per request of each, measured at the same moments.

    python -m benchmarks.paired_cpu --commits BEFORE,AFTER [--concurrency 64] [--seconds 8] [--rounds 4]

On a machine shared with other work, runs one after the other measure the neighbours as much as
the change: a starved router handles fewer requests per turn of its event loop and pays more per
request. Here both commits' `quiver serve` run at once, on the same server CPU (as the harness pins
servers: benchmarks/harness.py), each under its own closed loop from one load-generating process on
the other CPUs, so each round's contention falls on both alike; the rounds are the repetitions.

Each commit's tree is `git archive`d into a scratch folder with its generated protobuf modules
and put first on `PYTHONPATH` (Ray's workers inherit it), so a commit runs as it was committed,
whatever the working tree holds. Per round and commit: req/s and CPU milliseconds per request of
the router, the replica and every process of its session (benchmarks/process_cpu.py's reading);
the summary is AFTER ÷ BEFORE per round. Writes benchmarks/results/paired-cpu-<stamp>.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from contextlib import ExitStack
from dataclasses import replace
from io import BytesIO
from pathlib import Path

from benchmarks import harness, models, provenance
from benchmarks.process_cpu import REPLICA, ROUTER, Window, measure
from benchmarks.targets import TARGETS, free_port

ROOT = Path(__file__).resolve().parents[1]
# How setup.py maps the folders into the `quiver` package (its package-dir), for a tree on PYTHONPATH.
PACKAGES = {"router": "router", "serving": "serving", "operator": "operator/controller"}


def tree(commit: str, scratch: Path) -> Path:
    """`commit`'s files under scratch/<commit>, importable as `quiver` with PYTHONPATH pointing there."""
    out = scratch / commit.replace("/", "_")
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as files:
        files.extractall(out, filter="data")
    for name, folder in PACKAGES.items():
        (out / "quiver" / name).symlink_to(out / folder, target_is_directory=True)
    from grpc_tools import protoc

    (out / "quiver" / "_proto").mkdir()
    (out / "quiver" / "_proto" / "__init__.py").write_text("")
    for proto in sorted((out / "protos").glob("*.proto")):  # as setup.py generates them
        if protoc.main(["protoc", f"-Iquiver/_proto={out / 'protos'}", f"--python_out={out}", f"--grpc_python_out={out}", str(proto)]):
            raise RuntimeError(f"protoc failed on {proto}")
    return out


def row(commit: str, window: Window) -> dict:
    answered = window.answered
    router = sum(s for name, s in window.cpu_s.items() if name == ROUTER)
    replica = sum(s for name, s in window.cpu_s.items() if name.startswith(REPLICA))
    return {"commit": commit, "req_per_s": round(answered / window.elapsed_s, 1),
            "router_ms": round(1000 * router / answered, 3), "replica_ms": round(1000 * replica / answered, 3),
            "all_ms": round(1000 * sum(window.cpu_s.values()) / answered, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.paired_cpu", description=__doc__.splitlines()[0])
    parser.add_argument("--commits", required=True, help="BEFORE,AFTER: two commits (or branches, tags)")
    parser.add_argument("--model", default="example", help=f"one of {list(models.KEYS)}")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=8.0, help="per round, after 2 s of warm-up")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", type=Path, default=provenance.RESULTS)
    args = parser.parse_args()
    commits = args.commits.split(",")
    if len(commits) != 2:
        parser.error("--commits takes two commits: BEFORE,AFTER")
    run = provenance.begin()
    pins = harness.pinning(harness.BenchSettings())
    if pins.client_cpus:
        os.sched_setaffinity(0, pins.client_cpus)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="quiver-paired-") as scratch, ExitStack() as servers:
        [model] = models.prepare([args.model], Path(scratch))
        started = []
        for commit in commits:
            source = tree(commit, Path(scratch))
            launch = TARGETS["quiver"].launch(model, Path(scratch), len(pins.server_cpus or os.sched_getaffinity(0)))
            metrics_port = free_port()
            launch = replace(launch, command=[*launch.command, "--metrics-port", str(metrics_port)],
                             env={**launch.env, "PYTHONPATH": str(source)})
            log = Path(scratch) / f"{commit.replace('/', '_')}.log"
            address, session = servers.enter_context(harness.started(launch, pins.server_cpus, log, timeout_s=300))
            started.append((address, f"http://127.0.0.1:{metrics_port}/metrics", session))
        for number in range(args.rounds):
            windows = asyncio.run(_together(started, model, args.concurrency, args.seconds))
            pair = [row(commit, window) for commit, window in zip(commits, windows)]
            load = round(os.getloadavg()[0], 1)
            rows += [{**r, "round": number, "load_1min": load} for r in pair]
            print(f"round {number} (load {load}): " + " | ".join(
                f"{r['commit']}: {r['req_per_s']:,.0f} req/s, CPU ms/req router {r['router_ms']:.3f} replica {r['replica_ms']:.3f} "
                f"all {r['all_ms']:.3f}" for r in pair), flush=True)
    body = markdown(rows, commits, args, pins)
    paths = provenance.write("paired-cpu", run, {"commits": commits, "rows": rows}, body,
                             f"{commits[1]} against {commits[0]}, side by side: server CPU per request", out=args.out)
    print(body)
    print("written:", *paths)


async def _together(started: list[tuple[str, str, int]], model: models.BenchModel, concurrency: int, seconds: float) -> list[Window]:
    return list(await asyncio.gather(*(measure(address, metrics, model, session, concurrency, seconds)
                                       for address, metrics, session in started)))


def markdown(rows: list[dict], commits: list[str], args: argparse.Namespace, pins: harness.Pinning) -> str:
    before, after = commits
    lines = [
        f"Both commits' `quiver serve` at once ({pins.how}); {args.model}, closed loop of batch-1 `ModelInfer` at "
        f"concurrency {args.concurrency} against each, {args.seconds:g} s per round after 2 s of warm-up. CPU ms per "
        "answered request from /proc: the router process, the replica, every process of the server's session.",
        "",
        "| round | load (1 min) | commit | req/s | router | replica | all |",
        "|---:|---:|---|---:|---:|---:|---:|",
        *(f"| {r['round']} | {r['load_1min']} | {r['commit']} | {r['req_per_s']:,.1f} | {r['router_ms']:.3f} | {r['replica_ms']:.3f} | "
          f"{r['all_ms']:.3f} |" for r in rows),
        "",
    ]
    ratios = {key: [a[key] / b[key] for b, a in zip(rows[0::2], rows[1::2])] for key in ("req_per_s", "router_ms", "all_ms")}
    for key, label in (("req_per_s", "req/s"), ("router_ms", "router CPU per request"), ("all_ms", "all CPU per request")):
        values = ratios[key]
        lines.append(f"- {after} ÷ {before}, {label}: median {statistics.median(values):.2f} "
                     f"(rounds: {', '.join(f'{v:.2f}' for v in values)})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
