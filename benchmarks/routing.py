"""SLO-aware routing between the real variants of one model: latency, and accuracy measured from the answers.

    python -m benchmarks.routing [--seconds 8] [--concurrency 8] [--rows 64 | --rows 1,8,32,64] [--budget-ms MS] [--profiles]

1. Builds the digits example (examples/digits/train.py: a CNN on scikit-learn's digits) and runs
   `quiver optimize` on it into a scratch store: fp32, int8-static, pruned and distilled, each
   published with the top-1 accuracy the pipeline measured on the eval set.
2. Serves the store with `quiver serve` (one replica per variant) and, for each way of asking,
   runs a closed loop of `--concurrency` clients for `--seconds` (after a 2 s warm-up that also
   gives the router live latency estimates). Every request carries `--rows` images of the eval
   set (a number drawn at random from the list, when it lists several: a mixed load), taken in
   turn; every answer's argmax is compared with those images' labels. So the
   accuracy delivered is counted from what came back, whichever variant served it.
3. The ways of asking: pinned to each variant (`quiver.variant`); no hints (the default variant,
   fp32, with spill-over); `quiver.latency_budget_ms`; the same budget with
   `quiver.min_accuracy` at fp32's measured accuracy. The budget, unless `--budget-ms` gives one,
   is the p50 measured pinned to fp32 in this same run: a budget the source model meets for half
   of its requests under this load. The pinned rows and no hints share one server, in that order;
   each hinted way gets a fresh server (`--repeats` of them, one after another), so that the
   router's latency estimates start from the manifest's measured p50s and not from what an
   earlier row left them at.
4. Times the policy (hints parsed, a variant chosen among the manifest's four) in this process.

With `--profiles` the store is tuned first (`quiver tune`, as benchmarks/prediction.py does it)
and each hinted way runs on it twice per repeat, without and with the profiles in its manifest
(the same settings, predicted as without `quiver tune`, then from the profiles: router/prediction.py);
the pinned rows and no hints run on the store without them.

Writes benchmarks/results/routing-<stamp>.{json,md} (benchmarks/provenance.py). Needs the
`examples` extra (torch, scikit-learn, onnx2torch, torch-pruning).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import timeit
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from benchmarks import provenance
from benchmarks.loadgen import closed_loop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.serverproc import ServerProcess, quiver_serve  # noqa: E402 (the launcher the tests use)

VARIANTS = "fp32,int8-static,pruned,distilled"


@dataclass
class Tally:
    """What the answers of one way of asking said."""

    latencies_ms: list[float] = field(default_factory=list)
    variants: list[str] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)
    rows: Counter[str] = field(default_factory=Counter)  # per variant
    correct: Counter[str] = field(default_factory=Counter)  # per variant

    def clear(self) -> None:
        self.__init__()


@contextmanager
def serving(store: Path) -> Iterator[ServerProcess]:
    """`quiver serve STORE`, tried twice: on this shared machine a start sometimes times out under others' load."""
    with ExitStack() as stack:
        for attempt in (1, 2):
            try:
                server = stack.enter_context(quiver_serve(str(store)))
                break
            except RuntimeError:
                if attempt == 2:
                    raise
                print(f"quiver serve {store} did not start; once more", flush=True)
        yield server


def build_store(scratch: Path, max_drop: float) -> Path:
    """The digits example and `quiver optimize` on it, as docs/optimizing.md runs them (kept if SCRATCH has them)."""
    build, store = scratch / "digits", scratch / "store"
    if (store / "digits/1/manifest.json").exists():
        return store
    subprocess.run([sys.executable, str(ROOT / "examples/digits/train.py"), "--out", str(build)], check=True)
    subprocess.run([
        sys.executable, "-m", "quiver", "optimize", str(build / "digits.onnx"), "--name", "digits", "--version", "1",
        "--store", str(store), "--calibration", str(build / "calibration.npz"), "--eval", str(build / "eval.npz"),
        "--train", str(build / "train.npz"), "--variants", VARIANTS, "--max-accuracy-drop", str(max_drop),
    ], check=True)
    return store


def policy_cost_us(manifest: dict, parameters: dict[str, object]) -> float:
    """µs per decision: the hints parsed and a variant chosen among the manifest's, primed with its
    measured p50s, or predicted from its profiles where it has them."""
    from quiver.router.hints import RoutingHints
    from quiver.router.policy import Candidate, choose
    from quiver.router.replicas import calls_per_replica
    from quiver.router.stats import VariantStats
    from quiver.serving import Precision, Variant

    candidates = []
    for v in manifest["variants"]:
        variant = Variant.model_validate(v)
        stats = VariantStats()
        stats.serve(variant, calls_per_replica(variant))  # its p50 and, where it runs as profiled, its profile
        candidates.append(Candidate(v["name"], Precision(v.get("precision", "fp32")), v.get("pool", "cpu"),
                                    v["metrics"]["accuracy"], True, stats))
    default, runs = manifest["default_variant"], 20_000
    seconds = min(timeit.repeat(lambda: choose(candidates, default, RoutingHints.from_parameters(parameters)),
                                number=runs, repeat=5))
    return 1e6 * seconds / runs


async def drive(address: str, images: np.ndarray, labels: np.ndarray, ways: list[tuple[str, dict]],
                args: argparse.Namespace) -> list[dict]:
    """Each way of asking in turn, on one server: 2 s of warm-up, then `args.seconds` measured."""
    out = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for label, parameters in ways:
            tally, turn, draw = Tally(), [0], np.random.default_rng(0)

            async def call(parameters: dict = parameters, tally: Tally = tally) -> None:
                rows = int(draw.choice(args.rows))
                index = (turn[0] + np.arange(rows)) % len(images)
                turn[0] += rows
                x = images[index]
                message = pb.ModelInferRequest(
                    model_name="digits",
                    inputs=[pb.ModelInferRequest.InferInputTensor(name="image", datatype="FP32", shape=x.shape)],
                    raw_input_contents=[x.tobytes()],
                )
                for key, value in parameters.items():
                    # As text, as every client can send it (repr: the exact float back).
                    message.parameters[key].string_param = value if isinstance(value, str) else repr(value)
                began = time.perf_counter()
                response = await stub.ModelInfer(message, timeout=30)
                elapsed_ms = (time.perf_counter() - began) * 1000
                logits = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(rows, -1)
                variant = response.parameters["quiver.variant"].string_param
                tally.latencies_ms.append(elapsed_ms)
                tally.variants.append(variant)
                tally.reasons[response.parameters["quiver.reason"].string_param] += 1
                tally.rows[variant] += rows
                tally.correct[variant] += int((logits.argmax(1) == labels[index]).sum())

            await closed_loop(call, 2.0, args.concurrency)  # warm-up; the router's latency estimates follow
            tally.clear()
            turn[0] = 0
            sample = await closed_loop(call, args.seconds, args.concurrency)
            row = summarize(label, parameters, tally, sample.errors, sample.elapsed_s)
            out.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "latencies_ms"}), flush=True)
    return out


def summarize(label: str, parameters: dict, tally: Tally, errors: Counter, elapsed_s: float) -> dict:
    ms = np.asarray(tally.latencies_ms)
    rows, correct = sum(tally.rows.values()), sum(tally.correct.values())
    return {
        "requests": label,
        "parameters": parameters,
        "answered": len(ms),
        "errors": dict(errors),
        "req_per_s": round(len(ms) / elapsed_s, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
        "latencies_ms": [round(x, 3) for x in tally.latencies_ms],
        "served_by": dict(Counter(tally.variants)),
        "reasons": dict(tally.reasons),
        "rows": rows,
        "correct": correct,
        "accuracy_delivered": correct / rows if rows else None,
        "accuracy_by_variant": {v: tally.correct[v] / n for v, n in tally.rows.items()},
    }


def markdown(manifest: dict, rows: list[dict], budget_ms: float, cost_us: float, args: argparse.Namespace) -> str:
    published = ", ".join(f"{v['name']} {v['metrics']['accuracy']:.4f}" for v in manifest["variants"])
    lines = [
        f"digits CNN through `quiver optimize` ({VARIANTS}); top-1 on the eval set as the pipeline measured it: {published}. "
        f"`quiver serve`, one replica per variant; {args.concurrency} clients in a closed loop, {'/'.join(map(str, args.rows))} eval "
        f"images per request{' at random' if len(args.rows) > 1 else ''}, {args.seconds:g} s per row after 2 s of warm-up; accuracy delivered = answers whose argmax is the "
        f"label ÷ images answered. Budget {budget_ms:g} ms"
        + (" (given)." if args.budget_ms is not None else " (the p50 pinned to fp32 in this run)."),
        "",
        "Pinned and no hints ran on one server in that order; each hinted row on a fresh server of its own (the router's "
        "latency estimates start from the manifest's p50s).",
        "",
        f"| requests | req/s | p50 ms | p99 ms | within {budget_ms:g} ms | accuracy delivered | images | served by | reasons |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for row in rows:
        within = sum(ms <= budget_ms for ms in row["latencies_ms"]) / max(1, row["answered"])
        row["within_budget"] = within
        served = ", ".join(f"{v} {n}" for v, n in sorted(row["served_by"].items(), key=lambda kv: -kv[1]))
        errors = f" (failed: {row['errors']})" if row["errors"] else ""
        lines.append(f"| {row['requests']}{errors} | {row['req_per_s']:,} | {row['p50_ms']} | {row['p99_ms']} | {within:.1%} "
                     f"| {row['accuracy_delivered']:.4f} | {row['rows']:,} | {served} | "
                     + ", ".join(f"{r} {n}" for r, n in sorted(row["reasons"].items(), key=lambda kv: -kv[1])) + " |")
    if args.profiles:
        lines += ["", f"Without and with the profiles, over the servers (budget {budget_ms:g} ms):", "",
                  "| requests | profiles | answered | within budget | accuracy delivered |", "|---|---|---:|---:|---:|"]
        for (way, kind), group in _by_way(rows).items():
            answered = sum(row["answered"] for row in group)
            within = sum(row["within_budget"] * row["answered"] for row in group) / max(1, answered)
            correct, images = sum(row["correct"] for row in group), sum(row["rows"] for row in group)
            lines.append(f"| {way} | {kind} | {answered:,} | {within:.1%} | {correct / max(1, images):.4f} |")
    lines += ["", f"The policy (hints parsed, one of {len(manifest['variants'])} variants chosen): {cost_us:.1f} µs per "
              "decision (best of 5 × 20,000, in the benchmark's process"
              + (", predicted from the profiles)." if args.profiles else ").")]
    return "\n".join(lines)


def _by_way(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """The hinted rows grouped by way of asking and by store (without or with profiles)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        if "store" in row:
            groups.setdefault((row["way"], row["store"]), []).append(row)
    return groups


def sizes(text: str) -> list[int]:
    """A comma-separated list of positive integers, for the command line."""
    return [int(n) for n in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured per way of asking")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rows", type=sizes, default=[64], help="eval images per request; several: one drawn at random each")
    parser.add_argument("--budget-ms", type=float, help="latency budget (default: the p50 pinned to fp32 in this run)")
    parser.add_argument("--repeats", type=int, default=2, help="fresh servers per hinted way (its outcome depends on history)")
    parser.add_argument("--max-accuracy-drop", type=float, default=0.01, help="quiver optimize's gate")
    parser.add_argument("--out", type=Path, default=provenance.RESULTS)
    parser.add_argument("--build", type=Path, help="build the model and store here, or reuse them (default: a scratch folder)")
    parser.add_argument("--profiles", action="store_true", help="tune the store; each hinted way without and with its profiles")
    parser.add_argument("--tune-budget-s", type=float, default=120.0, help="with --profiles: quiver tune's --budget-s")
    args = parser.parse_args()
    run = provenance.begin()
    with tempfile.TemporaryDirectory(prefix="quiver-routing-") as directory:
        directory = args.build or directory
        if args.profiles:
            from benchmarks.prediction import tuned_stores  # it builds on this module's store

            stores = tuned_stores(Path(directory), args.tune_budget_s, args.max_accuracy_drop)
        else:
            stores = {"": build_store(Path(directory), args.max_accuracy_drop)}
        store = next(iter(stores.values()))  # without profiles
        manifest = json.loads((stores.get("with profiles", store) / "digits/1/manifest.json").read_text())
        with np.load(Path(directory) / "digits/eval.npz") as data:
            images, labels = np.ascontiguousarray(data["image"], np.float32), data["labels"]
        fp32_accuracy = next(v["metrics"]["accuracy"] for v in manifest["variants"] if v["name"] == "fp32")
        pinned = [(f"pinned to {v['name']}", {"quiver.variant": v["name"]}) for v in manifest["variants"]]
        with serving(store) as server:
            rows = asyncio.run(drive(server.address, images, labels, [*pinned, ("no hints (default fp32)", {})], args))
        budget_ms = args.budget_ms if args.budget_ms is not None else next(r["p50_ms"] for r in rows if r["requests"] == "pinned to fp32")
        hinted = [
            ("`quiver.latency_budget_ms`", {"quiver.latency_budget_ms": budget_ms}),
            ("the budget and `quiver.min_accuracy` = fp32's", {"quiver.latency_budget_ms": budget_ms,
                                                               "quiver.min_accuracy": fp32_accuracy}),
        ]
        # The router's latency estimates are what the pinned runs left them: each hinted way starts
        # from a fresh server, whose estimates begin at the manifest's measured p50s.
        for label, parameters in hinted:
            for repeat in range(1, args.repeats + 1):
                for kind, each in stores.items():
                    with serving(each) as server:
                        name = ", ".join(part for part in (label, kind, f"server {repeat}" if args.repeats > 1 else "") if part)
                        found = asyncio.run(drive(server.address, images, labels, [(name, parameters)], args))
                    rows += [{**row, "way": label, "store": kind} if kind else row for row in found]
    cost_us = policy_cost_us(manifest, {"quiver.latency_budget_ms": budget_ms, "quiver.min_accuracy": fp32_accuracy})
    body = markdown(manifest, rows, budget_ms, cost_us, args)
    data = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "manifest": manifest, "budget_ms": budget_ms,
            "policy_us_per_decision": round(cost_us, 2), "rows": rows}
    paths = provenance.write("routing", run, data, body, "Routing between the digits variants", out=args.out)
    print(body)
    print("written:", *paths)


if __name__ == "__main__":
    main()
