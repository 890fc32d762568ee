"""SLO-aware routing against sending everything to the most accurate variant.

    python -m benchmarks.routing [--seconds 10] [--concurrency 8] [--budget-ms 25]

A model with two variants of one signature: `accurate` (a wide MLP, deliberately slow, on the
"gpu" pool — a local node with no GPU) and `fast` (the small example MLP, on the cpu pool),
with measured accuracies 0.99 and 0.95 written into the manifest. Under the same closed-loop
load, it compares requests carrying `quiver.latency_budget_ms` with requests pinned to
`accurate`: the share answered within the budget, latency, and the accuracy delivered. It also
times the policy itself per request, in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import timeit
from pathlib import Path

import grpc
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from benchmarks.loadgen import closed_loop
from benchmarks.router_overhead import summary
from quiver.router.hints import RoutingHints
from quiver.router.policy import Candidate, choose
from quiver.router.stats import VariantStats
from quiver.serving import Manifest, Metrics, Precision, Replicas, Variant, build_example, from_onnx_file, write_version
from quiver.serving.store import sha256_file
from tests.serverproc import quiver_serve


def wide_mlp(path: Path, width: int = 3072) -> Path:
    rng = np.random.default_rng(0)
    shapes = [(64, width), (width, width), (width, 10)]
    names = [f"w{i}" for i in range(len(shapes))]
    nodes, current = [], "input"
    for i, name in enumerate(names):
        out = "output" if i == len(names) - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [current, name], [out + ("_pre" if out != "output" else "")]))
        if out != "output":
            nodes.append(helper.make_node("Relu", [out + "_pre"], [out]))
        current = out
    graph = helper.make_graph(
        nodes, "wide",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array((rng.standard_normal(s) / np.sqrt(s[0])).astype(np.float32), n) for s, n in zip(shapes, names)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def tiered_store(root: Path) -> None:
    directory = root / "tiered/1"
    directory.mkdir(parents=True)
    signature = from_onnx_file(build_example(directory / "fast.onnx")).manifest
    wide_mlp(directory / "accurate.onnx")

    def measured(accuracy: float) -> Metrics:
        return Metrics(metric="top1", accuracy=accuracy, accuracy_drop=0.99 - accuracy, max_abs_error=0, p50_ms=1, p99_ms=1,
                       throughput=1, throughput_batch=1)

    variants = [
        Variant(name="accurate", file="accurate.onnx", sha256=sha256_file(directory / "accurate.onnx"), pool="gpu",
                metrics=measured(0.99), replicas=Replicas(num_cpus=1)),
        Variant(name="fast", precision=Precision.INT8, file="fast.onnx", sha256=sha256_file(directory / "fast.onnx"),
                pool="cpu", metrics=measured(0.95), replicas=Replicas(num_cpus=1)),
    ]
    write_version(root, Manifest(name="tiered", version="1", inputs=signature.inputs, outputs=signature.outputs,
                                 variants=variants, default_variant="accurate"))


def policy_cost_us() -> float:
    candidates = [
        Candidate(name, Precision.FP32, pool, accuracy, True, VariantStats(prior_ms=ms))
        for name, pool, accuracy, ms in (("a", "gpu", 0.99, 20), ("b", "cpu", 0.97, 8), ("c", "cpu", 0.95, 4))
    ]
    parameters = {"quiver.latency_budget_ms": 10, "quiver.min_accuracy": "0.9"}
    runs = 20_000
    seconds = timeit.timeit(lambda: choose(candidates, "a", RoutingHints.from_parameters(parameters, 500.0)), number=runs)
    return 1e6 * seconds / runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--budget-ms", type=float, default=25.0)
    args = parser.parse_args()
    x = np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)

    def request(**parameters: object) -> pb.ModelInferRequest:
        message = pb.ModelInferRequest(
            model_name="tiered",
            inputs=[pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=x.shape)],
            raw_input_contents=[x.tobytes()],
        )
        for key, value in parameters.items():
            if isinstance(value, str):
                message.parameters[key].string_param = value
            else:
                message.parameters[key].int64_param = int(value)
        return message

    with tempfile.TemporaryDirectory() as scratch:
        tiered_store(Path(scratch))
        with quiver_serve(scratch, "--pools", "cpu,gpu") as server:

            async def run() -> list[tuple[str, dict, dict[str, int]]]:
                rows = []
                async with grpc.aio.insecure_channel(server.address) as channel:
                    stub = pb_grpc.GRPCInferenceServiceStub(channel)
                    for label, message in (
                        ("pinned to accurate", request(**{"quiver.variant": "accurate"})),
                        (f"budget {args.budget_ms:g} ms", request(**{"quiver.latency_budget_ms": args.budget_ms})),
                    ):
                        served: dict[str, int] = {}

                        async def call(message: pb.ModelInferRequest = message, served: dict[str, int] = served) -> None:
                            response = await stub.ModelInfer(message)
                            variant = response.parameters["quiver.variant"].string_param
                            served[variant] = served.get(variant, 0) + 1

                        await closed_loop(call, 1.0, args.concurrency)  # warm-up, and live latency estimates
                        served.clear()
                        sample = await closed_loop(call, args.seconds, args.concurrency)
                        within = sum(t * 1000 <= args.budget_ms for t in sample.latencies_s) / max(1, len(sample.latencies_s))
                        rows.append((label, summary(label, sample) | {"within_budget": within}, served))
                return rows

            rows = asyncio.run(run())
    accuracy = {"accurate": 0.99, "fast": 0.95}
    print(f"concurrency {args.concurrency}, budget {args.budget_ms:g} ms, {args.seconds:g} s each")
    print(f"{'requests':<22} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'in budget':>10} {'accuracy':>9}  served by")
    for label, row, served in rows:
        delivered = sum(accuracy[v] * n for v, n in served.items()) / max(1, sum(served.values()))
        print(f"{label:<22} {row['req_per_s']:>8} {row['p50_ms']:>8} {row['p99_ms']:>8} {row['within_budget']:>10.1%} "
              f"{delivered:>9.3f}  {served}")
    print(f"policy (hints parsed + variant chosen, 3 candidates): {policy_cost_us():.1f} µs per request")


if __name__ == "__main__":
    main()
