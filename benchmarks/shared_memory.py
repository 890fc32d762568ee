"""What system shared memory saves on a large input: perf_analyzer at concurrency 1, the same 4 MiB
request in the message and in a registered region, over gRPC and HTTP.

    python -m benchmarks.shared_memory [--mib 4] [--rounds 3] [--interval-ms 2000]

The model sums each row of a [-1, N] FP32 input (N = MiB × 262,144), so nearly all of a request's
time is moving its bytes. `quiver serve` runs the file; perf_analyzer (from the tritonclient wheel,
`make perf-analyzer`) measures each mode in turn, the modes alternated `--rounds` times because
this machine is shared. Printed and written (benchmarks/results/shared-memory-<stamp>.{json,md},
benchmarks/provenance.py): p50 latency and throughput per protocol and mode, and the median ratio
of p50 in the message to p50 in shared memory.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import onnx
from onnx import TensorProto, helper, numpy_helper

import numpy as np

from benchmarks import provenance

PERF_ANALYZER = Path(sys.executable).parent / "perf_analyzer"
READY = re.compile(r"^ready: (?P<grpc>\S+) models=\S* http=http://(?P<http>\S+)")


def build_model(path: Path, columns: int) -> Path:
    graph = helper.make_graph(
        nodes=[helper.make_node("ReduceSum", ["input", "axes"], ["total"], keepdims=1)],
        name="big_input",
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", columns])],
        outputs=[helper.make_tensor_value_info("total", TensorProto.FLOAT, ["batch", 1])],
        initializer=[numpy_helper.from_array(np.array([1], np.int64), "axes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime Quiver supports
    onnx.save(model, path)
    return path


def cuda_runtime_env() -> dict[str, str]:
    import nvidia.cuda_runtime  # type: ignore[import-not-found]  # libcudart.so.12 for perf_analyzer; no GPU used

    lib = Path(next(iter(nvidia.cuda_runtime.__path__))) / "lib"
    return {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [str(lib), os.environ.get("LD_LIBRARY_PATH", "")]))}


def measure(protocol: str, url: str, shared_memory: str, interval_ms: int, env: dict[str, str]) -> dict[str, float]:
    command = [str(PERF_ANALYZER), "-m", "big_input", "-i", protocol, "-u", url, "--shared-memory", shared_memory,
               "--concurrency-range", "1", "--measurement-interval", str(interval_ms), "-s", "100", "-r", "10"]  # fmt: skip
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    if run.returncode != 0:
        raise RuntimeError(f"perf_analyzer failed:\n{run.stdout}{run.stderr}")
    return {
        "p50_us": float(re.search(r"p50 latency: (\d+) usec", run.stdout)[1]),
        "throughput": float(re.search(r"Throughput: ([\d.]+) infer/sec", run.stdout)[1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--interval-ms", type=int, default=2000)
    args = parser.parse_args()
    run = provenance.begin()
    env = cuda_runtime_env()
    with tempfile.TemporaryDirectory(prefix="quiver-shm-bench-") as scratch:
        model = build_model(Path(scratch) / "big_input.onnx", args.mib * (1 << 18))
        server = subprocess.Popen(
            [sys.executable, "-m", "quiver", "serve", str(model), "--name", "big_input", "--port", "0", "--http-port", "0",
             "--metrics-port", "-1", "--log-level", "WARNING"],  # fmt: skip
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=scratch,
        )
        addresses: dict[str, str] = {}
        ready = threading.Event()

        def follow() -> None:
            for line in server.stdout:
                if match := READY.match(line.strip()):
                    addresses.update(grpc=match["grpc"], http=match["http"])
                    ready.set()

        threading.Thread(target=follow, daemon=True).start()
        try:
            if not ready.wait(300):
                raise RuntimeError("quiver serve did not become ready")
            results: dict[str, dict[str, list[dict[str, float]]]] = {}
            for _ in range(args.rounds):
                for protocol in ("grpc", "http"):
                    for mode in ("none", "system"):
                        sample = measure(protocol, addresses[protocol], mode, args.interval_ms, env)
                        results.setdefault(protocol, {}).setdefault(mode, []).append(sample)
                        print(protocol, mode, sample, flush=True)
        finally:
            server.terminate()
            server.wait(120)
    rows, summary = [], {}
    for protocol, modes in results.items():
        ratios = [m["p50_us"] / s["p50_us"] for m, s in zip(modes["none"], modes["system"])]
        summary[protocol] = {"p50_ratio_median": round(statistics.median(ratios), 2), "ratios": [round(r, 2) for r in ratios]}
        for mode in ("none", "system"):
            p50 = statistics.median(s["p50_us"] for s in modes[mode])
            throughput = statistics.median(s["throughput"] for s in modes[mode])
            rows.append(f"| {protocol} | {'in the message' if mode == 'none' else 'system shared memory'} | {p50:.0f} | {throughput:.1f} |")
    body = "\n".join([
        f"perf_analyzer, concurrency 1, one {args.mib} MiB FP32 input per request; medians of {args.rounds} alternated rounds.",
        "",
        "| protocol | input | p50 latency (µs) | throughput (infer/s) |",
        "|---|---|---|---|",
        *rows,
        "",
        *(f"- {protocol}: p50 in the message / in shared memory = {s['p50_ratio_median']}× (rounds: {s['ratios']})" for protocol, s in summary.items()),
    ])  # fmt: skip
    print(body)
    provenance.write("shared-memory", run, {"results": results, "summary": summary}, body, f"System shared memory against the message, {args.mib} MiB input")


if __name__ == "__main__":
    main()
