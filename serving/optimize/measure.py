"""Measure a variant: accuracy on the eval set against the fp32 reference, and speed here.

Metrics: `top1` (accuracy against the eval set's labels), `top1-agreement` (same argmax as the
fp32 reference; used when there are no labels) and `cosine` (mean cosine similarity to the
reference's output rows, for embeddings), each with its tail (accuracy.py). Speed: p50/p99
latency at batch 1 and rows/s at a larger batch, each loop bounded in time and count.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..manifest import Metrics
from .accuracy import Metric, Scores, Statistic, scores
from .datasets import Dataset


@dataclass(frozen=True)
class SpeedBudget:
    seconds: float = 1.0
    max_runs: int = 2000
    throughput_batch: int = 64


def session(path: Path, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def outputs_on(model: ort.InferenceSession, data: Dataset, output: str, batch: int = 256) -> np.ndarray:
    """The model's `output` over the whole data set, run in batches."""
    return np.concatenate([model.run([output], feeds)[0] for feeds in data.batches(batch)])


def speed(model: ort.InferenceSession, data: Dataset, budget: SpeedBudget) -> tuple[float, float, float]:
    """p50 and p99 latency (ms) at batch 1, and rows/s at `budget.throughput_batch`."""
    one = data.batches(1)[0]
    latencies = _timed_runs(model, one, budget)
    big = {name: np.resize(array, (budget.throughput_batch, *array.shape[1:])) for name, array in data.inputs.items()}
    batch_times = _timed_runs(model, big, budget)
    return (
        float(np.percentile(latencies, 50) * 1000),
        float(np.percentile(latencies, 99) * 1000),
        budget.throughput_batch / float(np.median(batch_times)),
    )


def measure(
    path: Path,
    data: Dataset,
    output: str,
    metric: Metric,
    reference: np.ndarray,
    reference_scores: Scores,
    gate: Statistic,
    budget: SpeedBudget,
) -> Metrics:
    model = session(path)
    outputs = outputs_on(model, data, output)
    found = scores(metric, outputs, reference, data.labels)
    p50, p99, throughput = speed(model, data, budget)
    return Metrics(
        metric=found.metric,
        accuracy=found.mean,
        accuracy_drop=found.drop(reference_scores, Statistic.MEAN),
        tail_unit=found.unit,
        accuracy_p5=found.statistic(Statistic.P5),
        accuracy_min=found.statistic(Statistic.MIN),
        accuracy_drop_p5=found.drop(reference_scores, Statistic.P5),
        accuracy_drop_min=found.drop(reference_scores, Statistic.MIN),
        gate=gate.value,
        max_abs_error=float(np.abs(outputs.astype(np.float64) - reference).max()),
        p50_ms=p50,
        p99_ms=p99,
        throughput=throughput,
        throughput_batch=budget.throughput_batch,
    )


def _timed_runs(model: ort.InferenceSession, feeds: dict[str, np.ndarray], budget: SpeedBudget) -> list[float]:
    model.run(None, feeds)  # warm-up
    times: list[float] = []
    deadline = time.perf_counter() + budget.seconds
    while len(times) < budget.max_runs and (len(times) < 5 or time.perf_counter() < deadline):
        start = time.perf_counter()
        model.run(None, feeds)
        times.append(time.perf_counter() - start)
    return times
