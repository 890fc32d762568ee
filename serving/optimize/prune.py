"""The pruned variant: whole channels and neurons removed by weight magnitude, then fine-tuned.

The result is a smaller dense model (fewer filters, narrower matrices), which is what makes
ONNX Runtime faster; zeroed weights in unchanged shapes would not. Fine-tuning on the training
set's labels, when given, recovers most of the accuracy the cut cost.
"""

from __future__ import annotations

from pathlib import Path

from torch.nn import functional

from ..manifest import Manifest
from .datasets import Dataset
from .training import export, fit, shrink, to_torch
from .settings import Training


def prune(source: Path, target: Path, signature: Manifest, ratio: float, train: Dataset | None, options: Training) -> Path:
    model = shrink(to_torch(source), signature, ratio)
    if train is not None and train.labels is not None:
        fit(model, train, lambda inputs, outputs, labels: functional.cross_entropy(outputs, labels), options)
    return export(model, signature, target)
