"""`quiver tune`'s settings against Quiver's defaults, at the same p99 SLO, on the digits CNN or MiniLM int8.

    python -m benchmarks.tune [--model digits|minilm] [--slo-p99-ms N] [--budget-s 120] [--seconds 3]

`digits`: trains the digits CNN (examples/digits/train.py) and optimizes it into fp32 and
int8-static variants in a scratch store. `minilm`: all-MiniLM-L6-v2's int8-dynamic variant, copied
into a scratch store from the one benchmarks/models.py builds (and keeps) without any download.
Then it runs `quiver tune` on those variants, and measures each with its defaults (one replica
of one CPU, one thread, batches of 64, no wait) and with its tuned settings side by side on one
Ray instance, through the same path `quiver tune` measures (quiver/trials.py): closed loops of
`--loads` clients sending one-row requests. A setting's number is the most rows/s among the loads
whose p99 stays within the SLO; rounds alternate defaults and tuned so that the machine's other
work falls on both. Results: benchmarks/results/tune-<stamp>.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import models, provenance
from quiver.serving import ServingSettings, read_version
from quiver.serving.tune import Space
from quiver.trials import ServePath

ROOT = Path(__file__).resolve().parents[1]
QUIVER = [sys.executable, "-m", "quiver"]
# Per model: the SLO (a few times its one-row p50 here) and the variants tuned.
MODELS = {
    "digits": {"slo_p99_ms": 20.0, "variants": ["fp32", "int8-static"], "title": "digits CNN"},
    "minilm": {"slo_p99_ms": 150.0, "variants": ["int8-dynamic"], "title": "MiniLM int8"},
}


def digits_store(scratch: Path) -> Path:
    build, store = scratch / "digits", scratch / "store"
    subprocess.run([sys.executable, str(ROOT / "examples/digits/train.py"), "--out", str(build)], check=True)
    subprocess.run([*QUIVER, "optimize", str(build / "digits.onnx"), "--name", "digits", "--version", "1", "--store",
                    str(store), "--variants", "fp32,int8-static", "--calibration", str(build / "calibration.npz"),
                    "--eval", str(build / "eval.npz")], check=True)
    return store / "digits" / "1"


def minilm_store(scratch: Path) -> Path:
    """A copy: tuning rewrites the manifest, and the kept store serves the other benchmarks as optimized."""
    source = models._optimized(print).parent
    directory = scratch / "store" / "minilm" / "1"
    shutil.copytree(source, directory)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="digits")
    parser.add_argument("--slo-p99-ms", type=float, help="default: the model's (digits 20, minilm 150)")
    parser.add_argument("--budget-s", type=float, default=120.0, help="quiver tune's budget, all variants")
    parser.add_argument("--trial-s", type=float, default=4.0, help="quiver tune's time per point, all its loads")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measured point")
    parser.add_argument("--loads", type=lambda text: [int(n) for n in text.split(",")], default=[1, 4, 16, 64])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=provenance.RESULTS)
    args = parser.parse_args()
    chosen = MODELS[args.model]
    args.slo_p99_ms = args.slo_p99_ms or chosen["slo_p99_ms"]
    run = provenance.begin()
    cpus = os.cpu_count() or 1
    loads = ",".join(map(str, args.loads))
    with tempfile.TemporaryDirectory() as scratch:
        directory = (digits_store if args.model == "digits" else minilm_store)(Path(scratch))
        store, name = directory.parent.parent, directory.parent.name
        tune = subprocess.run([*QUIVER, "tune", str(store), "--model", name, "--version", "1", "--slo-p99-ms", str(args.slo_p99_ms),
                               "--variants", ",".join(chosen["variants"]), "--budget-s", str(args.budget_s),
                               "--trial-s", str(args.trial_s), "--loads", loads], capture_output=True, text=True)
        print(tune.stdout, tune.stderr[-2000:] if tune.returncode > 1 else "")
        version = read_version(directory)
        rows = []
        with ServePath(version, ["cpu"], cpus) as path:
            for variant in (version.manifest.variant(v) for v in chosen["variants"]):
                found = variant.profile
                arms = {"defaults": Space(cpus=cpus).start(), "tuned": found.settings if found and found.meets_slo else None}
                for round_ in range(args.rounds):
                    for arm, settings in arms.items():
                        if settings is not None:
                            rows.append({"variant": variant.name, "arm": arm, "round": round_, "settings": settings.model_dump(),
                                         "points": _sweep(path, variant, settings, args.seconds, args.loads)})
                path.release(variant)
    data = {"settings": {**vars(args), "out": str(args.out), "cpus": cpus}, "tune_stdout": tune.stdout, "rows": rows}
    body = markdown(rows, args.slo_p99_ms, tune.returncode, args.loads)
    title = f"quiver tune against the defaults: {chosen['title']}, same SLO"
    paths = provenance.write("tune", run, data, body, title, out=args.out)
    print(body)
    print("written:", *paths)


def _sweep(path: ServePath, variant, settings: ServingSettings, seconds: float, loads: list[int]) -> list[dict]:  # noqa: ANN001
    return [{"clients": t.clients, "p50_ms": t.p50_ms, "p99_ms": t.p99_ms, "rows_per_s": t.throughput}
            for t in path.sweep(variant, settings, seconds * len(loads), loads)]


def best_within(points: list[dict], slo: float) -> float:
    return max((p["rows_per_s"] for p in points if p["p99_ms"] <= slo), default=0.0)


def _ratios(rows: list[dict], variant: str, slo: float) -> list[float]:
    """Tuned ÷ defaults per round where the defaults met the SLO at some load (0 where tuned met it at none)."""
    ratios = []
    for round_ in sorted({row["round"] for row in rows if row["variant"] == variant}):
        arm = {row["arm"]: best_within(row["points"], slo) for row in rows if row["variant"] == variant and row["round"] == round_}
        if arm.get("defaults") and "tuned" in arm:
            ratios.append(arm["tuned"] / arm["defaults"])
    return ratios


def markdown(rows: list[dict], slo: float, tune_rc: int, loads: list[int]) -> str:
    lines = [
        f"Rows/s at p99 ≤ {slo:g} ms: the best over closed loops of {', '.join(map(str, loads))} clients (one-row requests), "
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
    for variant in dict.fromkeys(row["variant"] for row in rows):
        ratios = sorted(_ratios(rows, variant, slo))
        if ratios:
            lines.append(f"\n{variant}: median tuned ÷ defaults over {len(ratios)} rounds {statistics.median(ratios):.2f} "
                         f"(range {ratios[0]:.2f}-{ratios[-1]:.2f}).")
    lines += ["", "Every point (clients: p99 ms / rows/s):", ""]
    for row in rows:
        points = "; ".join(f"{p['clients']}: {p['p99_ms']:.1f} / {p['rows_per_s']:.0f}" for p in row["points"])
        lines.append(f"- {row['variant']} {row['arm']} round {row['round']}: {points}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
