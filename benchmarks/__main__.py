"""`python -m benchmarks COMMAND`: the peer-comparison harness.

    python -m benchmarks peers                 # make .venv-bench-{kserve,mlserver,pytriton}
    python -m benchmarks bench [options]       # run, then write JSON, Markdown and PNG
    python -m benchmarks report RESULTS.json   # write the Markdown and PNG again from a run's JSON

`bench` runs every model × target (benchmarks/harness.py) and writes
OUT/bench.json, OUT/bench.md and OUT/bench.png (benchmarks/report.py); OUT defaults to
benchmarks/results. The other benchmarks keep their own entry points
(`python -m benchmarks.routing`, `.variants`, `.faults`, `.soak`, `.tracing_cost`, which write
benchmarks/results/<name>-<stamp>.{json,md} through benchmarks/provenance.py;
`.router_overhead`, `.process_cpu`, `.hop_cost`, `.grpc_stop_race`, which print).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from benchmarks import harness, models, report
from benchmarks.targets import PEER_VENVS, PEERS, TARGETS, peer_python


def _csv(kind: type) -> callable:
    return lambda text: tuple(kind(item) for item in text.split(",") if item)


def bench(args: argparse.Namespace) -> None:
    settings = harness.BenchSettings(
        targets=args.targets, models=args.models, concurrency=args.concurrency, rates=args.rates, seconds=args.seconds,
        warmup_s=args.warmup, rpc_timeout_s=args.rpc_timeout, ready_timeout_s=args.ready_timeout,
        server_cpus=args.server_cpus, client_cpus=args.client_cpus,
    )
    results = harness.run(settings, log=lambda line: print(line, file=sys.stderr, flush=True))
    for path in report.write(results, args.out, args.stem):
        print(path)
    if args.print_json:
        print(json.dumps(results))


def rerender(args: argparse.Namespace) -> None:
    results = json.loads(args.results.read_text())
    for path in report.write(results, args.results.parent, args.results.stem):
        print(path)


def peers(args: argparse.Namespace) -> None:
    """One virtual environment per peer, from its frozen requirements (their pins clash with ours);
    PyTriton's on Python 3.12 (targets.PEER_PYTHON), whatever --python says."""
    for name in args.only or tuple(PEER_VENVS):
        venv = PEER_VENVS[name]
        requirements = PEERS / f"{name}-requirements.txt"
        if not (venv / "bin/python").exists():
            subprocess.run([peer_python(name, args.python), "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin/pip"), "install", "--quiet", "--disable-pip-version-check", "-r", str(requirements)],
                       check=True)
        print(f"{venv}: installed from {requirements}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("bench", help="run the peer comparison and write its results")
    run.add_argument("--targets", type=_csv(str), default=tuple(TARGETS), help=f"comma-separated, of {list(TARGETS)}")
    run.add_argument("--models", type=_csv(str), default=models.KEYS, help=f"comma-separated, of {list(models.KEYS)}")
    run.add_argument("--concurrency", type=_csv(int), default=harness.BenchSettings.concurrency,
                     help="closed-loop sweep (default: 1,4,16,64)")
    run.add_argument("--rates", type=_csv(float), default=None,
                     help="open-loop req/s for every model (default: each model's own; '' for none)")
    run.add_argument("--seconds", type=float, default=harness.BenchSettings.seconds, help="measured per point")
    run.add_argument("--warmup", type=float, default=harness.BenchSettings.warmup_s, help="warm-up per point")
    run.add_argument("--rpc-timeout", type=float, default=harness.BenchSettings.rpc_timeout_s, help="deadline per request")
    run.add_argument("--ready-timeout", type=float, default=harness.BenchSettings.ready_timeout_s,
                     help="longest wait for a target's first answer")
    run.add_argument("--server-cpus", type=_csv(int), default=None, help="CPUs of the servers (default: the first half)")
    run.add_argument("--client-cpus", type=_csv(int), default=None, help="CPUs of the load generator (default: the rest)")
    run.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    run.add_argument("--stem", default="bench", help="file names: STEM.json, STEM.md, STEM.png")
    run.add_argument("--print-json", action="store_true", help="also print the results as one JSON line")
    run.set_defaults(func=bench)

    again = commands.add_parser("report", help="write STEM.md and STEM.png again from STEM.json")
    again.add_argument("results", type=Path)
    again.set_defaults(func=rerender)

    install = commands.add_parser("peers", help="create the peers' virtual environments")
    install.add_argument("--only", type=_csv(str), default=None, help=f"of {list(PEER_VENVS)}")
    install.add_argument("--python", default=sys.executable, help="interpreter for the new environments")
    install.set_defaults(func=peers)

    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
