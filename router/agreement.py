"""How far a variant agrees with its reference on live traffic: per-row scores, a window, a lower bound.

Each compared row scores in [0, 1]: top1 and tolerance score 1 when the rows agree (the same
argmax; every element within the tolerance) and 0 otherwise; cosine scores the rows' cosine
similarity. A `Window` keeps the last rows' scores. Its lower bound is Wilson's score interval
for the 0/1 metrics (sound at 0.99 agreement on a few hundred rows, where the normal
approximation is not), and the mean less z standard errors for cosine. router/shadow.py feeds
it; routing reads it.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from quiver.serving.confidence import Z_95, wilson_lower
from quiver.serving.manifest import ShadowMetric


def row_scores(metric: ShadowMetric, outputs: np.ndarray, reference: np.ndarray, tolerance: float) -> np.ndarray:
    """One score per row (axis 0) of `outputs` against the reference's."""
    a = outputs.reshape(len(outputs), -1).astype(np.float64)
    b = reference.reshape(len(reference), -1).astype(np.float64)
    if metric is ShadowMetric.TOP1:
        return (a.argmax(1) == b.argmax(1)).astype(np.float64)
    if metric is ShadowMetric.TOLERANCE:
        return (np.abs(a - b) <= tolerance).all(1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.clip((a * b).sum(1) / np.maximum(norms, 1e-12), 0.0, 1.0)


class Window:
    """The scores of the last `size` rows compared."""

    def __init__(self, metric: ShadowMetric, size: int = 2000) -> None:
        self.metric = metric
        self._scores: deque[float] = deque(maxlen=size)

    def add(self, scores: np.ndarray) -> None:
        self._scores.extend(scores.tolist())

    @property
    def count(self) -> int:
        return len(self._scores)

    @property
    def agreement(self) -> float:
        return sum(self._scores) / len(self._scores) if self._scores else 0.0

    @property
    def lower_bound(self) -> float:
        n = len(self._scores)
        if self.metric is not ShadowMetric.COSINE:
            return wilson_lower(sum(self._scores), n)
        if n < 2:
            return 0.0
        return max(0.0, self.agreement - Z_95 * float(np.std(self._scores, ddof=1)) / math.sqrt(n))
