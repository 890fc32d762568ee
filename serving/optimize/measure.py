"""Measure a variant: accuracy on the eval set against the fp32 reference, and speed here.

Metrics: `top1` (accuracy against the eval set's labels), `top1-agreement` (same argmax as the
fp32 reference; used when there are no labels) and `cosine` (mean cosine similarity to the
reference's output rows, for embeddings). Speed: p50/p99 latency at batch 1 and rows/s at a
larger batch, each loop bounded in time and count.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..manifest import Metrics
from .datasets import Dataset


class Metric(str, enum.Enum):
    TOP1 = "top1"
    COSINE = "cosine"


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


def score(metric: Metric, outputs: np.ndarray, reference: np.ndarray, labels: np.ndarray | None) -> tuple[str, float]:
    """The metric's name and value of `outputs` (the reference scores itself with the same call)."""
    if metric is Metric.COSINE:
        a, b = outputs.reshape(len(outputs), -1).astype(np.float64), reference.reshape(len(reference), -1).astype(np.float64)
        cosine = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
        return "cosine", float(cosine.mean())
    predicted = outputs.reshape(len(outputs), -1).argmax(1)
    if labels is not None:
        return "top1", float((predicted == labels).mean())
    return "top1-agreement", float((predicted == reference.reshape(len(reference), -1).argmax(1)).mean())


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
    reference_score: float,
    budget: SpeedBudget,
) -> Metrics:
    model = session(path)
    outputs = outputs_on(model, data, output)
    name, value = score(metric, outputs, reference, data.labels)
    p50, p99, throughput = speed(model, data, budget)
    return Metrics(
        metric=name,
        accuracy=value,
        accuracy_drop=reference_score - value,
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
