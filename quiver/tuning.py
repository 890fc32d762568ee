"""`quiver tune`: search each variant's serving settings under a time budget, with a progress
bar per variant, then record the chosen settings and profiles in the store and write a report."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from quiver.serving import IntegrityError, ModelVersion, Profile, StoreError, Variant, read_version
from quiver.serving.store import MANIFEST_FILE
from quiver.serving.tune import (
    SearchResult, Space, Trial, TuneError, check_writable, operating_point, profile, record, search, write_report,
)

# Share of a variant's budget kept for its per-batch latency profile, after the search.
_PROFILE_SHARE = 0.15


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", type=Path, metavar="STORE_DIR", help="the model store holding the version")
    parser.add_argument("--model", required=True, help="model name in the store")
    parser.add_argument("--version", required=True, help="version to tune")
    parser.add_argument("--variants", type=lambda text: text.split(","), metavar="NAME[,NAME...]", help="default: all of the version's")
    parser.add_argument("--slo-p99-ms", type=float, help="p99 latency a chosen point must stay within (default: none)")
    parser.add_argument(
        "--objective", choices=["throughput", "latency"], default="throughput",
        help="most rows/s, or lowest p99, among the points within the SLO (default: %(default)s)",
    )
    parser.add_argument("--budget-s", type=float, default=300.0, help="time for the whole search, shared by the variants (default: %(default)s)")
    parser.add_argument("--trial-s", type=float, default=4.0, help="measuring time per point, all its loads (default: %(default)s)")
    parser.add_argument(
        "--loads", type=lambda text: sorted(int(n) for n in text.split(",")), default=[1, 4, 16, 64], metavar="N[,N...]",
        help="closed loops of this many clients each point is measured under (default: 1,4,16,64)",
    )
    parser.add_argument("--cpus", type=int, help="CPUs of a pool node to tune for (default: this machine's)")
    parser.add_argument("--model-key", type=Path, help="32-byte key file that decrypts variants encrypted at rest")
    parser.add_argument("--sign-key", type=Path, metavar="KEY.pem", help="EC private key to sign the version again with (required if it is signed)")


def run_tune(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    try:
        version = _version(args.store, args.model, args.version)
        variants = [version.manifest.variant(name) for name in _names(version, args.variants)]
        check_writable(version, args.sign_key)
        results, profiles = _tune(version, variants, args, console)
        write_report(version.directory, f"{version.key} tuned", results, profiles)
        record(args.store, version, profiles, args.sign_key)
    except (TuneError, StoreError, IntegrityError, OSError) as exc:
        console.print(f"[red]quiver tune: {escape(str(exc))}[/red]", soft_wrap=True, highlight=False)  # one line: scripts read it
        return 2
    _show(results, profiles)
    print(f"recorded in {version.directory / MANIFEST_FILE}; report {version.directory / 'tune.html'}")
    missed = [name for name, found in profiles.items() if not found.meets_slo]
    if missed:
        print(f"none meets the SLO of {args.slo_p99_ms} ms for {', '.join(missed)}: their settings are unchanged")
    return 1 if missed else 0


def _version(store: Path, model: str, version: str) -> ModelVersion:
    directory = store / model / version
    if not (directory / MANIFEST_FILE).is_file():
        held = sorted(f"{path.parent.parent.name}:{path.parent.name}" for path in store.glob(f"*/*/{MANIFEST_FILE}"))
        raise TuneError(f"store {store} has no model {model!r} version {version!r} (it holds: {', '.join(held) or 'nothing'})")
    return read_version(directory)


def _names(version: ModelVersion, wanted: list[str] | None) -> list[str]:
    unknown = sorted(set(wanted or []) - set(version.manifest.variant_names))
    if unknown:
        raise TuneError(f"{version.key} has no variant {', '.join(unknown)} (it has {', '.join(version.manifest.variant_names)})")
    return wanted or version.manifest.variant_names


def _tune(version: ModelVersion, variants: list[Variant], args: argparse.Namespace, console: Console) -> tuple[dict[str, SearchResult], dict[str, Profile]]:
    from quiver.trials import ServePath

    share = args.budget_s / len(variants)
    cpus = args.cpus or os.cpu_count() or 1
    results: dict[str, SearchResult] = {}
    profiles: dict[str, Profile] = {}
    columns = (TextColumn("{task.description:<12}"), BarColumn(), TimeRemainingColumn(), TextColumn("{task.fields[now]}"))
    with ServePath(version, sorted({v.pool for v in variants}), cpus, args.model_key) as path, \
            Progress(*columns, console=console) as bars:
        for variant in variants:
            bar = bars.add_task(variant.name, total=share, now="starting")

            def progress(trial: Trial, result: SearchResult, bar: int = bar) -> None:
                best = result.chosen
                bars.update(bar, completed=min(share, bars.tasks[bar].elapsed or 0), now=(
                    f"{len(result.trials)} trials; best {best.throughput:.0f} rows/s at p99 {best.p99_ms:.1f} ms"
                    if best else f"{len(result.trials)} trials; none within the SLO yet"))

            result = search(
                Space(cpus=cpus),
                lambda settings, seconds, variant=variant: operating_point(
                    path.sweep(variant, settings, seconds, args.loads, args.slo_p99_ms), args.objective, args.slo_p99_ms),
                objective=args.objective, slo_p99_ms=args.slo_p99_ms, budget_s=share * (1 - _PROFILE_SHARE),
                trial_s=args.trial_s, progress=progress,
            )
            results[variant.name] = result
            measured = result.chosen or result.fastest
            if measured is not None:
                bars.update(bar, now="latency per batch size")
                sizes = measured.settings.max_batch_size.bit_length()
                latency = path.latency_by_batch(variant, measured.settings, share * _PROFILE_SHARE / sizes)
                profiles[variant.name] = profile(result, variant.pool, latency)
            path.release(variant)
            bars.update(bar, completed=share, now=f"{len(result.trials)} trials")
    return results, profiles


def _show(results: dict[str, SearchResult], profiles: dict[str, Profile]) -> None:
    table = Table(title="quiver tune")
    for column in ("variant", "trials", "threads", "batch", "wait ms", "replicas×cpus", "clients", "p50 ms", "p99 ms", "rows/s", "SLO"):
        table.add_column(column, justify="left" if column in ("variant", "SLO") else "right", no_wrap=True)
    for name, result in results.items():
        found = profiles.get(name)
        if found is None:
            table.add_row(name, "0", *("-",) * 8, "nothing measured")
            continue
        s = found.settings
        table.add_row(
            name, str(len(result.trials)), f"{s.intra_op_threads}/{s.inter_op_threads}", str(s.max_batch_size),
            f"{s.max_wait_ms:g}", f"{s.replicas}×{s.cpus_per_replica:g}", str(found.concurrency), f"{found.p50_ms:.2f}", f"{found.p99_ms:.2f}",
            f"{found.throughput:.0f}", "met" if found.meets_slo else "none meets",
        )
    Console(width=140).print(table)
