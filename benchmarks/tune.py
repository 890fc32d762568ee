"""`quiver tune`'s settings against Quiver's defaults, on the digits CNN, at the same p99 SLO.

    python -m benchmarks.tune [--slo-p99-ms 20] [--budget-s 120] [--seconds 3]

Trains the digits CNN (examples/digits/train.py), optimizes it into fp32 and int8-static
variants in a scratch store, runs `quiver tune` on them, then measures each variant with its
defaults (one replica of one CPU, one thread, batches of 64, no wait) and with its tuned settings
side by side on one Ray instance, through the same path `quiver tune` measures (quiver/trials.py):
closed loops of 1, 4, 16 and 64 clients sending one-row requests. A setting's number is the
most rows/s among the loads whose p99 stays within the SLO; rounds alternate defaults and tuned
so that the machine's other work falls on both. Results: benchmarks/results/tune-<stamp>.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import provenance
from quiver.serving import ServingSettings, read_version
from quiver.serving.tune import Space
from quiver.trials import ServePath

ROOT = Path(__file__).resolve().parents[1]
LOADS = (1, 4, 16, 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slo-p99-ms", type=float, default=20.0)
    parser.add_argument("--budget-s", type=float, default=120.0, help="quiver tune's budget, both variants")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measured point")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=provenance.RESULTS)
    args = parser.parse_args()
    run = provenance.begin()
    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as scratch:
        build, store = Path(scratch) / "digits", Path(scratch) / "store"
        subprocess.run([sys.executable, str(ROOT / "examples/digits/train.py"), "--out", str(build)], check=True)
        quiver = [sys.executable, "-m", "quiver"]
        subprocess.run([*quiver, "optimize", str(build / "digits.onnx"), "--name", "digits", "--version", "1", "--store",
                        str(store), "--variants", "fp32,int8-static", "--calibration", str(build / "calibration.npz"),
                        "--eval", str(build / "eval.npz")], check=True)
        tune = subprocess.run([*quiver, "tune", str(store), "--model", "digits", "--version", "1", "--slo-p99-ms",
                               str(args.slo_p99_ms), "--budget-s", str(args.budget_s)], capture_output=True, text=True)
        print(tune.stdout)
        version = read_version(store / "digits" / "1")
        rows = []
        with ServePath(version, ["cpu"], cpus) as path:
            for variant in version.manifest.variants:
                found = variant.profile
                arms = {"defaults": Space(cpus=cpus).start(), "tuned": found.settings if found and found.meets_slo else None}
                for round_ in range(args.rounds):
                    for arm, settings in arms.items():
                        if settings is not None:
                            rows.append({"variant": variant.name, "arm": arm, "round": round_, "settings": settings.model_dump(),
                                         "points": _sweep(path, variant, settings, args.seconds)})
                path.release(variant)
    data = {"settings": {**vars(args), "out": str(args.out), "cpus": cpus, "loads": LOADS}, "tune_stdout": tune.stdout, "rows": rows}
    body = markdown(rows, args.slo_p99_ms, tune.returncode)
    paths = provenance.write("tune", run, data, body, "quiver tune against the defaults: digits CNN, same SLO", out=args.out)
    print(body)
    print("written:", *paths)


def _sweep(path: ServePath, variant, settings: ServingSettings, seconds: float) -> list[dict]:  # noqa: ANN001
    return [{"clients": t.clients, "p50_ms": t.p50_ms, "p99_ms": t.p99_ms, "rows_per_s": t.throughput}
            for t in path.sweep(variant, settings, seconds * len(LOADS), list(LOADS))]


def best_within(points: list[dict], slo: float) -> float:
    return max((p["rows_per_s"] for p in points if p["p99_ms"] <= slo), default=0.0)


def markdown(rows: list[dict], slo: float, tune_rc: int) -> str:
    lines = [
        f"Rows/s at p99 ≤ {slo:g} ms: the best over closed loops of {', '.join(map(str, LOADS))} clients (one-row requests), "
        f"per round; `quiver tune` exited {tune_rc}.", "",
        "| variant | round | defaults rows/s | tuned rows/s | tuned ÷ defaults | tuned settings |", "|---|---|---|---|---|---|",
    ]
    for variant in dict.fromkeys(row["variant"] for row in rows):
        for round_ in sorted({row["round"] for row in rows if row["variant"] == variant}):
            arm = {row["arm"]: row for row in rows if row["variant"] == variant and row["round"] == round_}
            base = best_within(arm["defaults"]["points"], slo)
            tuned = arm.get("tuned")
            value = best_within(tuned["points"], slo) if tuned else None
            ratio = f"{value / base:.2f}" if value is not None and base else "-"
            settings = ", ".join(f"{k}={v}" for k, v in tuned["settings"].items()) if tuned else "none met the SLO"
            lines.append(f"| {variant} | {round_} | {base:.0f} | {'-' if value is None else f'{value:.0f}'} | {ratio} | {settings} |")
    lines += ["", "Every point (clients: p99 ms / rows/s):", ""]
    for row in rows:
        points = "; ".join(f"{p['clients']}: {p['p99_ms']:.1f} / {p['rows_per_s']:.0f}" for p in row["points"])
        lines.append(f"- {row['variant']} {row['arm']} round {row['round']}: {points}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
