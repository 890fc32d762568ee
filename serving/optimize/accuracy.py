"""Accuracy on the eval set as the gate sees it: the mean, a tail (p5, min), and drops against fp32.

`measure.py` scores every variant, and the pipeline the fp32 reference, with `scores`; the gate
then compares one `Statistic` of a variant's drop with `--max-accuracy-drop`.

The mean is over examples, as it always was: top-1 accuracy against labels, top-1 agreement with
fp32, or cosine similarity to fp32. A mean hides a tail: on 24 sentences of a kind an eval set
lacked, MiniLM int8's mean cosine was 0.9923 while one sentence fell to 0.9883. So each variant
also gets per-unit scores, and the tail statistics are taken over them:

- cosine: the unit is an example, its score its cosine to fp32's output row. p5 is the 5th
  percentile of those cosines, min the worst sentence.
- top1 and top1-agreement: an example's score would be 0 or 1, and the 5th percentile of 0/1
  values is 0 as soon as 5 % of examples are wrong (fp32's own p5 against labels is almost
  always 0): a tail that says nothing. The unit is a class instead, its score the accuracy (or
  agreement) within it; the class is the label, or fp32's prediction where there are no labels.
  p5 and min are then the low end of per-class accuracy: a class the variant breaks shows there
  even when the mean barely moves. A class with few eval examples makes a coarse score (one
  flip of three is a third), so a min gate on classes wants a few dozen examples per class.

A tail drop is that statistic taken over the per-unit drops (fp32's unit score minus the
variant's): p5's drop is their 95th percentile, min's the largest. fp32 scores 1 on every unit of
cosine and agreement, so there it is exactly fp32's statistic minus the variant's, as the mean's
drop is. Against labels it is the worst class's regression, which fp32's minimum minus the
variant's would hide whenever the variant breaks a class that is not fp32's worst.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

TAIL_PERCENTILE = 5


class Metric(str, enum.Enum):
    TOP1 = "top1"
    COSINE = "cosine"


class Statistic(str, enum.Enum):
    """What `--max-accuracy-drop` bounds (`--gate`): the mean drop, or a drop in the tail."""

    MEAN = "mean"
    P5 = "p5"
    MIN = "min"


@dataclass(frozen=True)
class Scores:
    """One model's accuracy on the eval set: the mean over examples, and its per-unit scores."""

    metric: str  # top1, top1-agreement or cosine
    mean: float
    unit: str  # what the tail is over: "example" (cosine) or "class" (top1)
    units: np.ndarray  # per-unit scores, in an order every model's scores on the same set share

    def statistic(self, which: Statistic) -> float:
        if which is Statistic.MEAN:
            return self.mean
        if which is Statistic.P5:
            return float(np.percentile(self.units, TAIL_PERCENTILE))
        return float(self.units.min())

    def drop(self, reference: Scores, which: Statistic) -> float:
        """How far `which` fell from the reference's (see the module docstring for the tail's)."""
        if which is Statistic.MEAN:
            return reference.mean - self.mean
        drops = reference.units - self.units
        return float(np.percentile(drops, 100 - TAIL_PERCENTILE) if which is Statistic.P5 else drops.max())


def scores(metric: Metric, outputs: np.ndarray, reference: np.ndarray, labels: np.ndarray | None) -> Scores:
    """The scores of `outputs` against fp32's `reference` outputs (fp32 scores itself the same way)."""
    if metric is Metric.COSINE:
        a, b = outputs.reshape(len(outputs), -1).astype(np.float64), reference.reshape(len(reference), -1).astype(np.float64)
        cosine = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
        return Scores("cosine", float(cosine.mean()), "example", cosine)
    predicted = outputs.reshape(len(outputs), -1).argmax(1)
    expected = reference.reshape(len(reference), -1).argmax(1)
    name, truth = ("top1", labels) if labels is not None else ("top1-agreement", expected)
    correct = (predicted == truth).astype(np.float64)
    # Grouped by the label, or by fp32's prediction: the same classes for every model scored.
    _, group = np.unique(truth, return_inverse=True)
    per_class = np.bincount(group, weights=correct) / np.bincount(group)
    return Scores(name, float(correct.mean()), "class", per_class)
