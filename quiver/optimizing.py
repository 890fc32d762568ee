"""`quiver optimize`: the optimization pipeline with a progress bar per stage and a result table."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from quiver.serving import StoreError
from quiver.serving.optimize import (
    Calibration,
    DatasetError,
    Metric,
    OptimizeError,
    OptimizeSettings,
    Result,
    SpeedBudget,
    StaticQuantization,
    Statistic,
    Training,
    VariantKind,
    optimize,
    variant_kinds,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, metavar="MODEL.onnx")
    parser.add_argument("--name", required=True, help="model name in the store")
    parser.add_argument("--version", required=True, help="version to write (refused if it exists, unless --force)")
    parser.add_argument("--store", type=Path, required=True, help="model store directory")
    parser.add_argument("--eval", type=Path, required=True, help=".npz: one array per input, optional 'labels'")
    parser.add_argument("--calibration", type=Path, help=".npz for static int8 calibration")
    parser.add_argument(
        "--variants",
        type=lambda text: tuple(VariantKind(v) for v in text.split(",")),
        help=f"comma-separated, of {[k.value for k in VariantKind]} (default: by model kind)",
    )
    parser.add_argument(
        "--max-accuracy-drop", type=float, default=0.01, help="largest drop against fp32 published (default: %(default)s)"
    )
    parser.add_argument(
        "--gate", type=Statistic, choices=[s.value for s in Statistic], default=Statistic.MEAN,
        help="the statistic whose drop is held to --max-accuracy-drop: the mean, or the tail (5th percentile, worst) "
        "over examples for cosine and over classes for top1 (default: mean)",
    )
    parser.add_argument("--metric", type=Metric, choices=list(Metric), default=Metric.TOP1)
    parser.add_argument("--output", help="output to evaluate (default: the model's first)")
    parser.add_argument("--calibration-method", type=Calibration, choices=list(Calibration), default=Calibration.MINMAX)
    parser.add_argument("--no-per-channel", action="store_true", help="per-tensor weight scales")
    parser.add_argument(
        "--symmetric-activations",
        action=argparse.BooleanOptionalAction,
        help="default: asymmetric on CPU pools (S8S8 QDQ), symmetric on GPU pools",
    )
    parser.add_argument("--target", choices=["cpu", "gpu"], default="cpu", help="pool the int8 defaults aim at")
    parser.add_argument("--train", type=Path, help=".npz to fine-tune (pruned) and distil on; labels optional")
    parser.add_argument("--prune-ratio", type=float, default=0.5, help="share of channels pruned (default: %(default)s)")
    parser.add_argument("--student-width", type=float, default=0.5, help="student width vs teacher (default: %(default)s)")
    parser.add_argument("--student", type=Path, help="ONNX student to distil into, instead of a narrower teacher copy")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs for pruned/distilled (default: %(default)s)")
    parser.add_argument("--bench-seconds", type=float, default=1.0, help="time per speed measurement")
    parser.add_argument("--bench-batch", type=int, default=64, help="batch for the throughput measurement")
    parser.add_argument("--expect-sha256", help="refuse MODEL.onnx unless its sha256 is this")
    parser.add_argument("--force", action="store_true", help="replace an existing version")
    parser.add_argument("--sign-key", type=Path, help="EC private key (PEM) to sign the version with (model-signing)")
    parser.add_argument("--encrypt-key", type=Path, help="write variants AES-256-GCM encrypted with this 32-byte key file")


def run_optimize(args: argparse.Namespace) -> int:
    choices = {} if args.symmetric_activations is None else {"symmetric_activations": args.symmetric_activations}
    settings = OptimizeSettings(
        model=args.model,
        name=args.name,
        version=args.version,
        store=args.store,
        eval=args.eval,
        calibration=args.calibration,
        variants=args.variants,
        max_accuracy_drop=args.max_accuracy_drop,
        gate=args.gate,
        metric=args.metric,
        output=args.output,
        static=StaticQuantization.for_device(
            args.target == "gpu", calibration=args.calibration_method, per_channel=not args.no_per_channel, **choices
        ),
        train=args.train,
        prune_ratio=args.prune_ratio,
        student_width=args.student_width,
        student=args.student,
        training=Training(epochs=args.epochs),
        speed=SpeedBudget(seconds=args.bench_seconds, throughput_batch=args.bench_batch),
        force=args.force,
        expect_sha256=args.expect_sha256,
        encrypt_key=args.encrypt_key,
        sign_key=args.sign_key,
    )
    console = Console(stderr=True)
    try:
        kinds = variant_kinds(settings)
        with Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[now]}"),
                      console=console, transient=False) as bars:
            stages = {
                "reference": bars.add_task("reference", total=1, now=""),
                "build": bars.add_task("build", total=len(kinds), now=""),
                "measure": bars.add_task("measure", total=len(kinds), now=""),
            }
            started: list[str] = []

            def progress(stage: str, variant: str) -> None:
                if started:  # the previous step is done
                    bars.advance(stages[started[-1]])
                started.append(stage)
                bars.update(stages[stage], now=variant)

            result = optimize(settings, progress)
            bars.advance(stages[started[-1]])
    except (OptimizeError, StoreError, DatasetError, OSError) as exc:
        console.print(f"[red]quiver optimize: {exc}[/red]")
        return 2
    Console().print(_table(result, settings.gate))
    print(f"published {result.manifest.variant_names} to {result.directory}")
    return 0


def _table(result: Result, gate: Statistic) -> Table:
    """Mean, p5 and min of the metric per variant; the drop column is the gated statistic's."""
    measured = [o.metrics for o in result.outcomes if o.metrics]
    metric = measured[0].metric if measured else "accuracy"
    table = Table(title=f"{result.manifest.name} version {result.manifest.version}: {metric} against fp32")
    drop = "drop" if gate is Statistic.MEAN else f"{gate.value} drop"
    columns = ("variant", "precision", "pool", "KiB", metric, "p5", "min", drop, "p50 ms", "p99 ms", "rows/s", "published")
    for column in columns:
        table.add_column(
            column, justify="left" if column in ("variant", "precision", "pool", "published") else "right",
            no_wrap=column == "variant",
        )
    for outcome in result.outcomes:
        m = outcome.metrics
        table.add_row(
            outcome.kind.value,
            outcome.kind.precision.value,
            outcome.kind.device.value,
            f"{outcome.size_bytes / 1024:.0f}",
            *((f"{m.accuracy:.4f}", _four(m.accuracy_p5), _four(m.accuracy_min), f"{m.drop(gate.value):+.4f}",
               f"{m.p50_ms:.3f}", f"{m.p99_ms:.3f}", _si(m.throughput)) if m else ("-",) * 7),
            "yes" if outcome.published else f"no: {outcome.reason}",
        )
    if measured:
        units = "classes" if measured[0].tail_unit == "class" else "examples"
        table.caption = f"p5 and min over {units}; rows/s at batch {measured[0].throughput_batch}"
    return table


def _four(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _si(value: float) -> str:
    return f"{value / 1e6:.1f}M" if value >= 1e6 else f"{value / 1e3:.1f}k" if value >= 1e3 else f"{value:.0f}"
