"""What tracing costs on the request path: off (the default), and on.

    python -m benchmarks.tracing_cost [--seconds 5] [--calls 20000]

1. Dispatch alone, in this process, over fake Serve handles that answer at once (no Ray, no
   gRPC: the router's own work per request, where a few microseconds would show): no call
   watchers (dispatch as it was before router/calls.py), the router's default (the probes'
   watcher, tracing off), and tracing on (a SERVER span around it and a CLIENT span per call,
   through a BatchSpanProcessor to an exporter that drops them).
2. End to end: `quiver serve` (the bundled example) with tracing off, then with
   `--otel-endpoint` to an OTLP collector in this process that drops what it gets, measured
   alternately twice with closed loops at concurrency 1 and 16 (benchmarks/loadgen.py).
Writes benchmarks/results/tracing-cost-<stamp>.{json,md} (benchmarks/provenance.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from concurrent import futures
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from benchmarks import provenance
from benchmarks.loadgen import closed_loop, summarize

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.serverproc import quiver_serve  # noqa: E402


def dispatch_alone(calls: int) -> dict[str, float]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    from quiver.router.dispatch import Dispatcher
    from quiver.router.health import ProbedReadiness
    from quiver.router.hints import RoutingHints
    from quiver.router.metrics import RouterMetrics
    from quiver.router.routes import RouteTable, VariantRoute
    from quiver.router.tracing import Tracing
    from quiver.serving import InferenceResult, Manifest, ModelVersion, app_name
    from quiver.serving.apps import AppState

    class Dropped(SpanExporter):
        def export(self, spans):  # noqa: ANN001
            return SpanExportResult.SUCCESS

    manifest = Manifest.model_validate({
        "name": "m", "version": "1",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 1]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}],
        "variants": [{"name": "a", "file": "m.onnx", "sha256": "0" * 64}],
    })
    version = ModelVersion(manifest, Path("."))
    result = InferenceResult({"y": np.zeros((1, 1), np.float32)}, 1, 1)

    class Response:  # a DeploymentResponse to `infer_many` that is answered at once
        def __init__(self, requests: list) -> None:
            self.results = [result] * len(requests)

        def __await__(self):
            return self.results
            yield  # unreachable: makes __await__ a generator

        def cancel(self) -> None:
            pass

    handle = SimpleNamespace(options=lambda **_: SimpleNamespace(remote=Response))
    routes = RouteTable([VariantRoute(version, manifest.variants[0], handle)])
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Dropped(), max_queue_size=1 << 17))
    tracing = Tracing(provider)
    inputs = {"x": np.zeros((1, 1), np.float32)}
    target = routes.lookup("m")
    request = SimpleNamespace(id="r", model_name="m", model_version="")
    context = SimpleNamespace(invocation_metadata=lambda: ())

    async def measure(traced: bool, watchers: list) -> float:
        readiness = ProbedReadiness(routes, poll=lambda: {app_name(version, manifest.variants[0]): AppState("RUNNING", 1)})
        await readiness.refresh()
        dispatcher = Dispatcher(RouterMetrics(), readiness, watchers=[w if w != "probes" else readiness.reachability for w in watchers])

        async def infer(request: object, context: object) -> object:
            served = await dispatcher.infer(target, RoutingHints(), inputs)
            parameters = {k: SimpleNamespace(string_param="x") for k in ("quiver.variant", "quiver.pool", "quiver.reason")}
            return SimpleNamespace(model_version="1", parameters=parameters, served=served)

        method = tracing.infer(infer) if traced else infer
        for _ in range(1000):
            await method(request, context)
        start = time.perf_counter()
        for _ in range(calls):
            await method(request, context)
        return (time.perf_counter() - start) / calls * 1e6

    async def all_of_them() -> dict[str, float]:
        out: dict[str, list[float]] = {"no watchers (before)": [], "default, tracing off": [], "tracing on": []}
        for _ in range(5):  # interleaved, best of five
            out["no watchers (before)"].append(await measure(False, []))
            out["default, tracing off"].append(await measure(False, ["probes"]))
            out["tracing on"].append(await measure(True, ["probes", tracing]))
        return {name: round(min(values), 2) for name, values in out.items()}

    try:
        return asyncio.run(all_of_them())
    finally:
        provider.shutdown()


class DroppingCollector:
    def Export(self, request, context):  # noqa: N802
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        return trace_service_pb2.ExportTraceServiceResponse()


def end_to_end(seconds: float) -> list[dict]:
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    collector = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = type("Collector", (DroppingCollector, trace_service_pb2_grpc.TraceServiceServicer), {})()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, collector)
    port = collector.add_insecure_port("127.0.0.1:0")
    collector.start()
    request = pb.ModelInferRequest(
        model_name="example",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 64])],
        raw_input_contents=[np.ones((1, 64), np.float32).tobytes()],
    )
    rows = []
    try:
        for round_ in (1, 2):
            for mode, args in (("off", ()), ("on", ("--otel-endpoint", f"http://127.0.0.1:{port}"))):
                with quiver_serve(*args, "--num-cpus", "1") as server:

                    async def measure() -> list[dict]:
                        async with grpc.aio.insecure_channel(server.address) as channel:
                            stub = pb_grpc.GRPCInferenceServiceStub(channel)
                            await closed_loop(lambda: stub.ModelInfer(request, timeout=10), 1.0, 4)  # warm-up
                            found = []
                            for concurrency in (1, 16):
                                numbers = summarize(await closed_loop(lambda: stub.ModelInfer(request, timeout=10), seconds, concurrency))
                                found.append({"tracing": mode, "round": round_, "concurrency": concurrency,
                                              "req_per_s": numbers["throughput"], "p50_ms": numbers["latency_ms"]["p50"],
                                              "p99_ms": numbers["latency_ms"]["p99"], "errors": numbers["errors"]})
                            return found

                    rows += asyncio.run(measure())
    finally:
        collector.stop(None)
    return rows


def markdown(micro: dict[str, float], rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"Dispatch alone (in this process, fake Serve handles, best of 5 interleaved rounds of {args.calls:,} requests):", "",
        "| dispatch | µs per request |", "|---|---:|",
        *(f"| {name} | {us} |" for name, us in micro.items()),
        "", f"End to end (`quiver serve --num-cpus 1`, the bundled example, closed loop, {args.seconds:g} s per point; "
        "tracing on exports to a collector in this process that drops the spans; off and on alternated, twice):", "",
        "| tracing | round | concurrency | req/s | p50 ms | p99 ms | errors |", "|---|---:|---:|---:|---:|---:|---|",
        *(f"| {r['tracing']} | {r['round']} | {r['concurrency']} | {r['req_per_s']:,} | {r['p50_ms']} | {r['p99_ms']} | "
          f"{r['errors'] or 0} |" for r in rows),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--out", type=Path, default=provenance.RESULTS)
    args = parser.parse_args()
    run = provenance.begin()
    micro = dispatch_alone(args.calls)
    print(json.dumps({"dispatch_us_per_request": micro}), flush=True)
    rows = end_to_end(args.seconds)
    print(json.dumps({"end_to_end": rows}, indent=1), flush=True)
    data = {"settings": {"seconds": args.seconds, "calls": args.calls}, "dispatch_us_per_request": micro, "end_to_end": rows}
    paths = provenance.write("tracing-cost", run, data, markdown(micro, rows, args), "What tracing costs", out=args.out)
    print("written:", *paths)


if __name__ == "__main__":
    main()
