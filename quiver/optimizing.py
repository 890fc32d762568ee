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
    # Choices are listed by value (`top1`), what a user types, not as the enums they become.
    parser.add_argument("model", type=Path, metavar="MODEL.onnx", help="the trained model (fp32)")
    parser.add_argument("--name", required=True, help="model name in the store")
    parser.add_argument("--version", required=True, help="version to write (refused if it exists, unless --force)")
    parser.add_argument("--store", type=Path, required=True, metavar="DIR", help="model store directory")
    parser.add_argument(
        "--eval", type=Path, required=True, metavar="EVAL.npz", help="one array per input, optional 'labels'"
    )
    parser.add_argument("--calibration", type=Path, metavar="CALIB.npz", help="inputs for static int8 calibration")
    parser.add_argument(
        "--variants",
        type=lambda text: tuple(VariantKind(v) for v in text.split(",")),
        metavar="KIND[,KIND...]",
        help=f"of {', '.join(k.value for k in VariantKind)} (default: by model kind)",
    )
    parser.add_argument(
        "--max-accuracy-drop", type=float, default=0.01, help="largest drop against fp32 published (default: %(default)s)"
    )
    parser.add_argument(
        "--gate", type=Statistic, choices=[s.value for s in Statistic], default=Statistic.MEAN,
        help="the statistic whose drop is held to --max-accuracy-drop: the mean, or the tail (5th percentile, worst) "
        "over examples for cosine and over classes for top1 (default: mean)",
    )
    parser.add_argument(
        "--metric", type=Metric, choices=[m.value for m in Metric], default=Metric.TOP1,
        help="agreement with fp32: top-1 class, or cosine of the outputs (default: top1)",
    )
    parser.add_argument("--output", help="output to evaluate (default: the model's first)")
    parser.add_argument(
        "--calibration-method", type=Calibration, choices=[c.value for c in Calibration], default=Calibration.MINMAX,
        help="how static int8 picks activation ranges (default: minmax)",
    )
    parser.add_argument("--no-per-channel", action="store_true", help="per-tensor weight scales")
    parser.add_argument(
        "--symmetric-activations",
        action=argparse.BooleanOptionalAction,
        help="default: asymmetric on CPU pools (S8S8 QDQ), symmetric on GPU pools",
    )
    parser.add_argument("--target", choices=["cpu", "gpu"], default="cpu", help="pool the int8 defaults aim at")
    parser.add_argument("--train", type=Path, metavar="TRAIN.npz", help="data to fine-tune (pruned) and distil on; labels optional")
    parser.add_argument("--prune-ratio", type=float, default=0.5, help="share of channels pruned (default: %(default)s)")
    parser.add_argument("--student-width", type=float, default=0.5, help="student width vs teacher (default: %(default)s)")
    parser.add_argument(
        "--student", type=Path, metavar="STUDENT.onnx", help="student to distil into, instead of a narrower teacher copy"
    )
    parser.add_argument("--epochs", type=int, default=30, help="training epochs for pruned/distilled (default: %(default)s)")
    parser.add_argument("--bench-seconds", type=float, default=1.0, help="time per speed measurement (default: %(default)s)")
    parser.add_argument("--bench-batch", type=int, default=64, help="batch for the throughput measurement (default: %(default)s)")
    parser.add_argument("--expect-sha256", metavar="HEX", help="refuse MODEL.onnx unless its sha256 is this")
    parser.add_argument("--force", action="store_true", help="replace an existing version")
    parser.add_argument(
        "--sign-key", type=Path, metavar="KEY.pem", help="EC private key to sign the version with (model-signing)"
    )
    parser.add_argument(
        "--encrypt-key", type=Path, metavar="KEY_FILE", help="write variants AES-256-GCM encrypted with this 32-byte key"
    )


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
    _show(result, settings.gate)
    print(f"published {result.manifest.variant_names} to {result.directory}")
    return 0


# The table's columns, and the two halves a narrow terminal gets instead of one wide table.
_COLUMNS = ("variant", "precision", "pool", "KiB", "metric", "p5", "min", "drop", "p50 ms", "p99 ms", "rows/s", "published")
_TEXT_COLUMNS = ("variant", "precision", "pool", "published")
_ACCURACY = ("variant", "precision", "pool", "metric", "p5", "min", "drop", "published")
_SPEED = ("variant", "KiB", "p50 ms", "p99 ms", "rows/s")


def _show(result: Result, gate: Statistic) -> None:
    """The result table, never cut: rich fits a table to the console by truncating cells (`cos…`,
    `+0.…`), and a pipe or a log file counts as 80 columns. So off a terminal the table gets the
    width it needs; on a terminal too narrow for it, it comes as two tables, accuracy and speed."""
    console = Console()
    table = _table(result, gate)
    width = console.measure(table, options=console.options.update_width(10_000)).maximum  # unconstrained
    if not console.is_terminal:
        Console(width=width).print(table)
    elif width <= console.width:
        console.print(table)
    else:
        for columns in (_ACCURACY, _SPEED):
            console.print(_table(result, gate, columns, edge=False))


def _table(result: Result, gate: Statistic, columns: tuple[str, ...] = _COLUMNS, edge: bool = True) -> Table:
    """Mean, p5 and min of the metric per variant; the drop column is the gated statistic's.
    Without `edge`, no outer border or padding: four columns more fit in 80."""
    measured = [o.metrics for o in result.outcomes if o.metrics]
    metric = measured[0].metric if measured else "accuracy"
    title = f"{result.manifest.name} version {result.manifest.version}: {metric} against fp32"
    headers = {"metric": metric, "drop": "drop" if gate is Statistic.MEAN else f"{gate.value} drop"}
    rows = []
    for outcome in result.outcomes:
        m = outcome.metrics
        rows.append({
            "variant": outcome.kind.value,
            "precision": outcome.kind.precision.value,
            "pool": outcome.kind.device.value,
            "KiB": f"{outcome.size_bytes / 1024:.0f}",
            **dict(zip(
                ("metric", "p5", "min", "drop", "p50 ms", "p99 ms", "rows/s"),
                (f"{m.accuracy:.4f}", _four(m.accuracy_p5), _four(m.accuracy_min), f"{m.drop(gate.value):+.4f}",
                 f"{m.p50_ms:.3f}", f"{m.p99_ms:.3f}", _si(m.throughput)) if m else ("-",) * 7,
            )),
            "published": "yes" if outcome.published else f"no: {outcome.reason}",
        })
    table = Table(title=title, show_edge=edge, pad_edge=edge)
    for column in columns:
        header = headers.get(column, column)
        # Only the free text may wrap (folding words longer than the column); a number or a name
        # cut short reads as another one.
        wraps = column == "published"
        table.add_column(
            header, justify="left" if column in _TEXT_COLUMNS else "right", no_wrap=not wraps,
            overflow="fold" if wraps else "ellipsis", min_width=len(header),
        )
    for row in rows:
        table.add_row(*(row[column] for column in columns))
    if measured:
        units = "classes" if measured[0].tail_unit == "class" else "examples"
        notes = {"p5": f"p5 and min over {units}", "rows/s": f"rows/s at batch {measured[0].throughput_batch}"}
        table.caption = "; ".join(note for column, note in notes.items() if column in columns)
    return table


def _four(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _si(value: float) -> str:
    return f"{value / 1e6:.1f}M" if value >= 1e6 else f"{value / 1e3:.1f}k" if value >= 1e3 else f"{value:.0f}"
