"""What shadow comparisons cost the clients: 100 % sampled against none, side by side on one server.

    python -m benchmarks.shadow [--seconds 5] [--repeats 2] [--rate 50] [--saturation 32] [--reference-clients 96]

One store holds the same model twice: a 256 → 256 Gemm optimized to fp32 and int8-static,
int8-static the default. Version 1 compares nothing (`shadow.sample_rate` 0); version 2 sends
every request int8 answered to fp32 as well (rate 1). One `quiver serve` serves both, so the two
share the machine, the router and the moment; windows alternate 1, 2, 1, 2 (`--repeats` pairs).

- low load: `--rate` requests per second on a fixed schedule (open loop), `--rows` rows each:
  the clients' p50 and p99 with shadowing off and on.
- saturation: `--saturation` clients on int8 (the default) and `--reference-clients` pinned to
  fp32 in closed loops, so that the reference's queue holds more client work than a shadow
  call's share of it (a quarter of its limit; router/stats.py): clients' throughput, p50 and
  errors, and from the router's metrics how many rows were compared and how many shadow calls
  were shed and why (`queue`: the bounded queue was full; `load`: the reference was past its
  share; `error`: the call failed).

Writes benchmarks/results/shadow-<stamp>.{json,md} (benchmarks/provenance.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
from benchmarks.loadgen import closed_loop, open_loop, summarize

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.models import build_gemm  # noqa: E402 (the tests' model builder)
from tests.serverproc import quiver_serve  # noqa: E402 (the launcher the tests use)

FEATURES = 256


def build_store(scratch: Path) -> Path:
    """Versions 1 (no shadowing) and 2 (every int8 answer compared) of one model."""
    from quiver.serving import Manifest
    from quiver.serving.manifest import Shadow
    from quiver.serving.optimize import OptimizeSettings, SpeedBudget, VariantKind, optimize

    model = build_gemm(scratch / "gemm.onnx", np.random.default_rng(0).standard_normal((FEATURES, FEATURES)) / 16)
    np.savez(scratch / "data.npz", x=np.random.default_rng(1).standard_normal((512, FEATURES)).astype(np.float32))
    store = scratch / "store"
    for version, rate in (("1", 0.0), ("2", 1.0)):
        optimize(OptimizeSettings(
            model=model, name="gemm", version=version, store=store, eval=scratch / "data.npz", calibration=scratch / "data.npz",
            variants=(VariantKind.FP32, VariantKind.INT8_STATIC), max_accuracy_drop=0.5,
            speed=SpeedBudget(seconds=0.05, max_runs=20, throughput_batch=8),
        ))
        path = store / "gemm" / version / "manifest.json"
        manifest = Manifest.model_validate_json(path.read_text())
        variants = [v.model_copy(update={"shadow": Shadow(sample_rate=rate)}) if v.name == "int8-static" else v for v in manifest.variants]
        path.write_text(Manifest.model_validate({**manifest.model_dump(), "variants": variants,
                                                 "default_variant": "int8-static"}).model_dump_json(exclude_none=True))
    return store


def shadow_counts(metrics_url: str) -> dict[str, float]:
    """Version 2's comparisons (rows) and shadow calls shed, by reason, so far."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in ("quiver_shadow_comparisons_total", "quiver_shadow_shed_total") and sample.labels["version"] == "2":
                key = sample.labels.get("reason", "compared_rows")
                counts[key] = counts.get(key, 0) + sample.value
    return counts


async def window(stub, version: str, rows: int, seconds: float, clients: int, pinned_fp32: int, rate: float | None = None) -> dict:
    x = np.random.default_rng(2).standard_normal((rows, FEATURES)).astype(np.float32)

    def request(parameters: dict[str, str]) -> pb.ModelInferRequest:
        message = pb.ModelInferRequest(
            model_name="gemm", model_version=version,
            inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=x.shape)], raw_input_contents=[x.tobytes()],
        )
        for key, value in parameters.items():
            message.parameters[key].string_param = value
        return message

    default, fp32 = request({}), request({"quiver.variant": "fp32"})
    call = lambda: stub.ModelInfer(default, timeout=30)  # noqa: E731
    loads = [open_loop(call, rate, seconds) if rate else closed_loop(call, seconds, clients)]
    if pinned_fp32:
        loads.append(closed_loop(lambda: stub.ModelInfer(fp32, timeout=30), seconds, pinned_fp32))
    samples = await asyncio.gather(*loads)
    return {"int8_clients": summarize(samples[0]), **({"fp32_clients": summarize(samples[1])} if pinned_fp32 else {})}


async def drive(server, args: argparse.Namespace) -> list[dict]:
    rows = []
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        await window(stub, "2", args.rows, 2.0, 1, 0)  # warm-up: both versions' variants answered once
        await window(stub, "1", args.rows, 2.0, 1, 0)
        for load, clients, pinned, rate in (
            (f"low load ({args.rate:g} req/s)", 0, 0, args.rate), ("saturation", args.saturation, args.reference_clients, None)
        ):
            for repeat in range(args.repeats):
                for version in ("1", "2"):
                    before = shadow_counts(server.metrics_url)
                    result = await window(stub, version, args.rows, args.seconds, clients, pinned, rate)
                    await asyncio.sleep(0.5)  # the shadow queue drains into the counts
                    after = shadow_counts(server.metrics_url)
                    row = {"load": load, "repeat": repeat + 1, "shadow": "100 %" if version == "2" else "off",
                           "shadow_counts": {k: after.get(k, 0) - before.get(k, 0) for k in after}, **result}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    return rows


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"256 → 256 Gemm, int8-static serving (default), fp32 the reference; {args.rows} rows per request; one `quiver serve`, "
        f"version 1 shadow off, version 2 shadow at 100 %, windows alternating, {args.seconds:g} s each. Low load: an open "
        f"loop at {args.rate:g} req/s. Saturation: {args.saturation} clients on int8 and {args.reference_clients} pinned "
        "to fp32 (closed loops).",
        "",
        "| load | shadow | int8 clients req/s | p50 ms | p99 ms | errors | fp32 clients req/s | p50 ms | rows compared | shed: queue | shed: load | shed: error |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        client, fp32, counts = row["int8_clients"], row.get("fp32_clients"), row["shadow_counts"]
        lines.append(
            f"| {row['load']} | {row['shadow']} | {client['throughput']} | {client['latency_ms']['p50']} | {client['latency_ms']['p99']} "
            f"| {client['errors'] or 0} | {fp32['throughput'] if fp32 else '–'} | {fp32['latency_ms']['p50'] if fp32 else '–'} "
            f"| {counts.get('compared_rows', 0):.0f} | {counts.get('queue', 0):.0f} | {counts.get('load', 0):.0f} | {counts.get('error', 0):.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="per window")
    parser.add_argument("--repeats", type=int, default=2, help="pairs of windows (off, on) per load")
    parser.add_argument("--rows", type=int, default=8, help="rows per request")
    parser.add_argument("--rate", type=float, default=50, help="requests per second at low load")
    parser.add_argument("--saturation", type=int, default=32, help="clients on int8 at saturation")
    parser.add_argument("--reference-clients", type=int, default=96, help="clients pinned to fp32 at saturation")
    parser.add_argument("--out", type=Path, default=provenance.RESULTS)
    args = parser.parse_args()
    run = provenance.begin()
    with tempfile.TemporaryDirectory(prefix="quiver-shadow-") as directory:
        store = build_store(Path(directory))
        with quiver_serve(str(store)) as server:
            rows = asyncio.run(drive(server, args))
    body = markdown(rows, args)
    paths = provenance.write("shadow", run, {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                                             "rows": rows}, body, "Shadow comparisons' cost to clients", out=args.out)
    print(body)
    print("written:", *paths)


if __name__ == "__main__":
    main()
