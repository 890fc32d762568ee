"""Overload: ten times the sustainable rate for 10 s.

The model here is compute-bound (about 20 ms of one CPU per request, no batching) and its
variant admits two requests in flight (`max_queued_requests: 2`: the queue a latency target
allows). A client process (tests/clients/overload_client.py) measures the rate the server
sustains (R: two callers back to back, what the variant admits) and its latency there
("normal"), sends 10 × R for 10 s, then measures again. Checked, with margins measured on this
two-core machine (the latency ones get a second cycle when the first misses: see below):
- the excess is shed at once with RESOURCE_EXHAUSTED (and nothing else fails), while the
  server keeps answering;
- admitted requests keep their p99 within 2× of normal (the p99 at the sustainable rate,
  before or after: the worse of the two, since this machine's noise hits either);
- the router's memory (RSS) stays flat;
- right after, service is normal: every request answered OK, at the rate and median latency of before.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from quiver.serving import Batching, Replicas, from_onnx_file, write_version

from . import faults
from .serverproc import quiver_serve

CLIENT = Path(__file__).parent / "clients" / "overload_client.py"


def build_slow(path: Path, rows: int = 512, width: int = 256, layers: int = 30) -> Path:
    """input FP32 [-1, 64] → output FP32 [-1, 10]: each input row is spread over `rows` rows
    and run through `layers` dense layers, so one request costs real compute (~20 ms here)."""
    rng = np.random.default_rng(0)

    def weights(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32), name)

    nodes = [
        helper.make_node("Unsqueeze", ["input", "axis1"], ["unsqueezed"]),
        helper.make_node("Expand", ["unsqueezed", "spread"], ["a_in"]),
        helper.make_node("MatMul", ["a_in", "w_in"], ["m0"]),
        helper.make_node("Tanh", ["m0"], ["a0"]),
    ]
    initializers = [
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array([1, rows, 64], np.int64), "spread"),
        weights("w_in", 64, width),
    ]
    for i in range(layers):
        nodes += [helper.make_node("MatMul", [f"a{i}", f"w{i}"], [f"m{i + 1}"]), helper.make_node("Tanh", [f"m{i + 1}"], [f"a{i + 1}"])]
        initializers.append(weights(f"w{i}", width, width))
    nodes += [
        helper.make_node("ReduceMean", [f"a{layers}", "axis1"], ["mean"], keepdims=0),
        helper.make_node("Gemm", ["mean", "w_out", "b_out"], ["output"]),
    ]
    initializers += [weights("w_out", width, 10), numpy_helper.from_array(np.zeros(10, np.float32), "b_out")]
    graph = helper.make_graph(
        nodes, "slow",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 10])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_ten_times_the_sustainable_rate_is_shed_quickly_and_admitted_requests_keep_their_latency(tmp_path: Path) -> None:
    store = tmp_path / "store"
    signature = from_onnx_file(build_slow(store / "slow/1/model.onnx")).manifest
    variant = signature.variants[0].model_copy(update={
        "replicas": Replicas(num_cpus=1, max_queued_requests=2),
        "batching": Batching(max_batch_size=1),
    })
    write_version(store, signature.model_copy(update={"name": "slow", "version": "1", "variants": [variant]}))

    with quiver_serve(str(store)) as server:
        memory: list[tuple[float, float]] = []  # (time, router RSS in MiB)
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.25):
                memory.append((time.monotonic(), rss_mb(server.process.pid)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        cycles = []
        # Latency on a shared two-core machine has stalls that are no one's queue: when the timing
        # checks miss, the whole cycle runs once more and must pass. Unbounded queueing fails both
        # (with the default limit of 256 per replica, admitted p50 here was 7.5 s and p99 10 s).
        for _ in range(2):
            done = subprocess.run([sys.executable, str(CLIENT), server.address, "slow"], capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr[-3000:]
            cycles.append({line["phase"]: line for line in map(json.loads, done.stdout.splitlines())})
            if not timing_misses(cycles[-1]):
                break
        sampling.set()
        sampler.join(5)

    def during(phase: dict) -> list[float]:
        return [mb for t, mb in memory if phase["start"] <= t <= phase["end"] + 0.5]

    for phases in cycles:
        capacity, overload, after = (phases[p] for p in ("capacity", "overload", "after"))
        print(
            f"\nsustainable {capacity['rate']}/s, ms {capacity['ms']['OK']}; overload at {overload['rate']}/s: "
            f"{overload['answers']} ms {overload['ms']}; after {after['rate']}/s, ms {after['ms']['OK']}; "
            f"router RSS {during(capacity)[-1]:.0f} → peak {max(during(overload) + during(after)):.0f} → {during(after)[-1]:.0f} MiB"
        )
        faults.record("overload", sent=overload["sent"], answers=overload["answers"], rate=overload["rate"], sustainable_rate=capacity["rate"],
                      ms=overload["ms"], router_rss_mib=[during(capacity)[-1], max(during(overload) + during(after)), during(after)[-1]])
        assert set(capacity["answers"]) == set(after["answers"]) == {"OK"}, (capacity, after)
        assert set(overload["answers"]) == {"OK", "RESOURCE_EXHAUSTED"}, overload
        # The server kept answering near its sustainable rate; the excess was shed, and quickly: the
        # behaviour under test is a time (a shed request is answered at once, not after a queue).
        assert overload["answers"]["OK"] >= 0.3 * capacity["rate"] * 10, overload
        assert overload["answers"]["RESOURCE_EXHAUSTED"] >= 0.6 * overload["sent"], overload
        assert overload["ms"]["RESOURCE_EXHAUSTED"]["50"] < 20 and overload["ms"]["RESOURCE_EXHAUSTED"]["99"] < 1000, overload["ms"]
    assert not timing_misses(cycles[-1]), timing_misses(cycles[-1])
    # Memory flat over every cycle: the router holds no queue of shed requests.
    before_mb = during(cycles[0]["capacity"])[-1]
    peak_mb = max(mb for t, mb in memory if t >= cycles[0]["overload"]["start"])
    end_mb = during(cycles[-1]["after"])[-1]
    assert peak_mb - before_mb < 50 and end_mb - before_mb < 25, (before_mb, peak_mb, end_mb)


def timing_misses(phases: dict) -> list[str]:
    """What of the latency properties one cycle missed: admitted p99 within 2× of normal (the
    p99 at the sustainable rate, before or after, the worse of the two), and right after the
    same service as before."""
    capacity, overload, after = (phases[p] for p in ("capacity", "overload", "after"))
    normal_p99 = max(capacity["ms"]["OK"]["99"], after["ms"]["OK"]["99"])
    misses = []
    if overload["ms"]["OK"]["99"] > 2 * normal_p99:
        misses.append(f"admitted p99 {overload['ms']['OK']['99']} ms > 2 × {normal_p99} ms")
    if after["rate"] < 0.6 * capacity["rate"]:
        misses.append(f"after: {after['rate']}/s, before {capacity['rate']}/s")
    if after["ms"]["OK"]["50"] > 1.5 * capacity["ms"]["OK"]["50"]:
        misses.append(f"after: p50 {after['ms']['OK']['50']} ms, before {capacity['ms']['OK']['50']} ms")
    return misses
