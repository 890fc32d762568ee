"""Where a request's time goes: ONNX Runtime alone, a Serve handle call, and the full router path.

    python -m benchmarks.router_overhead [--seconds 10] [--concurrency 64]

All on the bundled example model with batch-1 requests, measured in one run so the ratios
hold on a noisy machine:
1. ONNX Runtime called in this process (the floor);
2. a DeploymentHandle call from this process (a Ray driver) to the replica: Serve's hop,
   the replica's batching, ORT;
3. ServerLive through `quiver serve` (gRPC and the client alone, no model);
4. ModelInfer through `quiver serve`, one request at a time and CONCURRENCY in flight.
Every loop is bounded by --seconds (the harness's loops, benchmarks/loadgen.py). The client is
grpc.aio with tritonclient's stubs, so this process never loads Quiver's own generated
protobuf module.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from benchmarks.loadgen import Sample, closed_loop, summarize
from quiver.serving import example_version

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.serverproc import quiver_serve  # noqa: E402  (the same launcher the tests use)


def summary(name: str, sample: Sample) -> dict[str, float | str]:
    numbers = summarize(sample)
    return {
        "path": name,
        "requests": numbers["requests"],
        "req_per_s": numbers["throughput"],
        "p50_ms": numbers["latency_ms"]["p50"],
        "p99_ms": numbers["latency_ms"]["p99"],
        **({"errors": numbers["errors"]} if numbers["errors"] else {}),
    }


def onnxruntime_direct(model: Path, x: np.ndarray, seconds: float) -> dict:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    sample, deadline = Sample(), time.perf_counter() + seconds
    begin = time.perf_counter()
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        session.run(None, {"input": x})
        sample.latencies_s.append(time.perf_counter() - start)
    sample.elapsed_s = time.perf_counter() - begin
    return summary("onnxruntime in-process", sample)


def serve_handle(version, x: np.ndarray, seconds: float, concurrency: int, max_ongoing: list[int]) -> list[dict]:
    """Handle calls at 1 and CONCURRENCY in flight; the latter once per max_ongoing_requests."""
    import ray
    from ray import serve

    from quiver.serving import deploy

    ray.init(address="local", include_dashboard=False, logging_level="WARNING")
    serve.start(proxy_location="Disabled", logging_config={"log_level": "WARNING"})
    rows = []
    try:
        for limit in max_ongoing:
            variant = version.manifest.default
            variant = variant.model_copy(update={"replicas": variant.replicas.model_copy(update={"max_ongoing_requests": limit})})
            handle = deploy(version, variant)

            async def call(handle=handle) -> object:
                return await handle.infer.remote({"input": x})

            async def run(limit: int = limit) -> list[dict]:
                await closed_loop(call, 1.0, 1)  # warm-up
                return [
                    summary(f"serve handle, {c} in flight, max_ongoing {limit}", await closed_loop(call, seconds, c))
                    for c in sorted({1, concurrency})
                ]

            rows += asyncio.run(run())
        return rows
    finally:
        ray.shutdown()


def through_router(address: str, x: np.ndarray, seconds: float, concurrency: int) -> list[dict]:
    request = pb.ModelInferRequest(
        model_name="example",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=x.shape)],
        raw_input_contents=[x.tobytes()],
    )

    async def run() -> list[dict]:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)

            def live() -> Awaitable[object]:
                return stub.ServerLive(pb.ServerLiveRequest())

            def infer() -> Awaitable[object]:
                return stub.ModelInfer(request)

            await closed_loop(infer, 1.0, concurrency)  # warm-up
            return [
                summary("gRPC ServerLive (no model)", await closed_loop(live, seconds, 1)),
                summary("router ModelInfer, 1 in flight", await closed_loop(infer, seconds, 1)),
                summary(f"router ModelInfer, {concurrency} in flight", await closed_loop(infer, seconds, concurrency)),
            ]

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--max-ongoing", type=lambda text: [int(n) for n in text.split(",")], default=[8, 1024],
        help="Serve max_ongoing_requests values to compare at CONCURRENCY (default: 8,1024)",
    )
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    with tempfile.TemporaryDirectory() as scratch:
        version = example_version(Path(scratch))
        rows = [onnxruntime_direct(version.path(version.manifest.default), x, args.seconds)]
        rows += serve_handle(version, x, args.seconds, args.concurrency, args.max_ongoing)
    with quiver_serve() as server:
        rows += through_router(server.address, x, args.seconds, args.concurrency)

    print(f"{'path':<52} {'requests':>9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for row in rows:
        print(f"{row['path']:<52} {row['requests']:>9} {row['req_per_s']:>9} {row['p50_ms']:>8} {row['p99_ms']:>8}")
    print(json.dumps({"cpus": os.cpu_count(), "seconds": args.seconds, "rows": rows}))


if __name__ == "__main__":
    main()
