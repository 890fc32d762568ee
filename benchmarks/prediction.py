"""The router's latency prediction against what it then observed: without and with `quiver tune`'s profiles.

    python -m benchmarks.prediction [--seconds 3] [--concurrency 1,4,16] [--rows 1,8,32,64] [--build DIR]

1. The digits store as benchmarks/routing.py builds it (fp32, int8-static, pruned, distilled),
   copied and tuned (`quiver tune`, every variant, `--tune-budget-s`): each variant's settings and
   profile in its manifest. A copy of that store with the profiles taken out is "before": the
   same settings, served the same way, predicted as without `quiver tune` (the measured p50's
   moving average, one round per full batch queued); the tuned store is "after" (router/prediction.py).
2. Each store is served (`quiver serve`, one at a time, alternating `--repeats` times) and driven,
   pinned to fp32, by a closed loop of each of `--concurrency` clients in turn for `--seconds`, every
   request carrying a number of eval images drawn at random from `--rows`: a mixed load, in the
   request sizes and in the rows in flight.
3. The error is the router's own `quiver_prediction_error` histogram (|predicted − observed| ÷
   observed for each answered request, predicted when it was dispatched; observed by the router,
   from dispatch to answer): its p50 over the requests of each load and of all, interpolated within
   the histogram's buckets as Prometheus' `histogram_quantile` does.

Writes benchmarks/results/prediction-<stamp>.{json,md} (benchmarks/provenance.py). Needs the
`examples` extra (torch, scikit-learn, onnx2torch, torch-pruning).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from benchmarks import provenance
from benchmarks.loadgen import closed_loop
from benchmarks.routing import build_store, serving, sizes

MANIFEST = Path("digits/1/manifest.json")


def tuned_stores(scratch: Path, budget_s: float, max_drop: float = 0.01) -> dict[str, Path]:
    """{"without profiles": STORE, "with profiles": STORE}: the digits store tuned, and the same
    without the profiles (kept if SCRATCH has them)."""
    stores = {"without profiles": scratch / "tuned-without-profiles", "with profiles": scratch / "tuned"}
    if not (stores["with profiles"] / MANIFEST).exists():
        shutil.copytree(build_store(scratch, max_drop), stores["with profiles"])
        subprocess.run([sys.executable, "-m", "quiver", "tune", str(stores["with profiles"]), "--model", "digits",
                        "--version", "1", "--budget-s", str(budget_s), "--trial-s", "2"], check=True)
    if not (stores["without profiles"] / MANIFEST).exists():
        shutil.copytree(stores["with profiles"], stores["without profiles"])
        manifest = json.loads((stores["without profiles"] / MANIFEST).read_text())
        for variant in manifest["variants"]:
            variant.pop("profile", None)
        (stores["without profiles"] / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return stores


def error_buckets(metrics_url: str, variant: str) -> dict[float, float]:
    """The router's cumulative `quiver_prediction_error` buckets for the digits variant: upper bound → count."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    found: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "quiver_prediction_error":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket") and sample.labels["model"] == "digits" and sample.labels["variant"] == variant:
                found[float(sample.labels["le"])] = sample.value
    return found


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile: linear within the bucket the rank falls in."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if not total:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for bound in bounds:
        if buckets[bound] >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(buckets[bound] - below, 1e-12)
        lower, below = bound, buckets[bound]
    return lower


async def drive(server, images: np.ndarray, args: argparse.Namespace, rng: np.random.Generator) -> list[dict]:
    """Each load in turn on one server (after 1 s of warm-up): the error's histogram over each."""
    rows_out = []
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def call() -> None:
            rows = int(rng.choice(args.rows))
            x = images[rng.integers(0, len(images), rows)]
            message = pb.ModelInferRequest(
                model_name="digits",
                inputs=[pb.ModelInferRequest.InferInputTensor(name="image", datatype="FP32", shape=x.shape)],
                raw_input_contents=[x.tobytes()],
            )
            message.parameters["quiver.variant"].string_param = args.variant
            await stub.ModelInfer(message, timeout=30)

        await closed_loop(call, 1.0, max(args.concurrency))
        for clients in args.concurrency:
            before = error_buckets(server.metrics_url, args.variant)
            sample = await closed_loop(call, args.seconds, clients)
            after = error_buckets(server.metrics_url, args.variant)
            delta = {bound: after[bound] - before.get(bound, 0.0) for bound in after}
            rows_out.append({"clients": clients, "answered": len(sample.latencies_s), "errors": dict(sample.errors),
                             "client_p50_ms": round(1000 * float(np.percentile(sample.latencies_s, 50)), 2),
                             "buckets": delta})
    return rows_out


def markdown(results: dict[str, list[list[dict]]], args: argparse.Namespace) -> str:
    concurrency = ", ".join(map(str, args.concurrency))
    lines = [
        f"digits CNN ({args.variant}, pinned), settings and profiles from `quiver tune` (budget {args.tune_budget_s:g} s); "
        f"`quiver serve`; closed loops of {concurrency} clients in turn, {args.seconds:g} s each, every request "
        f"{'/'.join(map(str, args.rows))} eval images at random; the two stores alternate, {args.repeats} time(s) each. "
        f"Error: the router's `quiver_prediction_error` (|predicted − observed| ÷ observed per answered request), "
        "p50 interpolated within its buckets.",
        "",
        "| router's prediction | " + " | ".join(f"p50 error, {c} client{'s' * (c > 1)}" for c in args.concurrency) + " | p50 error, all | requests |",
        "|---|" + "---:|" * (len(args.concurrency) + 2),
    ]
    for label, runs in results.items():
        per_load = []
        total: dict[float, float] = {}
        for index in range(len(args.concurrency)):
            merged: dict[float, float] = {}
            for run in runs:
                for bound, count in run[index]["buckets"].items():
                    merged[bound] = merged.get(bound, 0.0) + count
                    total[bound] = total.get(bound, 0.0) + count
            per_load.append(quantile(0.5, merged))
        answered = sum(row["answered"] for run in runs for row in run)
        lines.append(f"| {label} | " + " | ".join(f"{e:.1%}" if e is not None else "–" for e in per_load)
                     + f" | {quantile(0.5, total):.1%} | {answered:,} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured per load")
    parser.add_argument("--concurrency", type=sizes, default=[1, 4, 16], help="clients of each closed loop, in turn")
    parser.add_argument("--rows", type=sizes, default=[1, 8, 32, 64], help="eval images per request, drawn at random")
    parser.add_argument("--variant", default="fp32")
    parser.add_argument("--repeats", type=int, default=1, help="servers per store, alternating")
    parser.add_argument("--tune-budget-s", type=float, default=120.0, help="quiver tune's --budget-s")
    parser.add_argument("--out", type=Path, default=provenance.RESULTS)
    parser.add_argument("--build", type=Path, help="build the stores here, or reuse them (default: a scratch folder)")
    args = parser.parse_args()
    run = provenance.begin()
    with tempfile.TemporaryDirectory(prefix="quiver-prediction-") as directory:
        directory = args.build or Path(directory)
        stores = tuned_stores(directory, args.tune_budget_s)
        with np.load(directory / "digits/eval.npz") as data:
            images = np.ascontiguousarray(data["image"], np.float32)
        rng = np.random.default_rng(0)
        results: dict[str, list[list[dict]]] = {label: [] for label in stores}
        for _ in range(args.repeats):
            for label, store in stores.items():
                with serving(store) as server:
                    results[label].append(asyncio.run(drive(server, images, args, rng)))
                print(label, json.dumps([{k: v for k, v in row.items() if k != "buckets"} for row in results[label][-1]]), flush=True)
        profiles = json.loads((stores["with profiles"] / MANIFEST).read_text())
    body = markdown(results, args)
    data = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "manifest": profiles, "results": {label: runs for label, runs in results.items()}}
    paths = provenance.write("prediction", run, data, body, "The router's latency prediction, without and with profiles", out=args.out)
    print(body)
    print("written:", *paths)


if __name__ == "__main__":
    main()
