"""The distilled variant: a smaller student trained to reproduce the teacher's outputs.

The student is a narrower copy of the teacher (its layers shrunk to `width`, weights
re-initialised) or a model the user supplies. For classifiers it learns the teacher's
temperature-softened outputs (KL divergence at temperature T, scaled by T²), mixed with
cross-entropy on labels when the data has them; for other outputs (embeddings) it learns the
teacher's outputs by mean squared error.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.nn import functional

from ..manifest import Manifest
from .datasets import Dataset
from .training import export, fit, shrink, to_torch
from .settings import Training


def distill(
    source: Path,
    target: Path,
    signature: Manifest,
    data: Dataset,
    options: Training,
    width: float = 0.5,
    student: Path | None = None,
    classifier: bool = True,
) -> Path:
    teacher = to_torch(source).eval()
    if student is None:
        model = shrink(to_torch(source), signature, 1 - width)
        for layer in model.modules():
            if hasattr(layer, "reset_parameters") and layer is not model:
                layer.reset_parameters()
    else:
        model = to_torch(student)

    def loss(inputs: list[torch.Tensor], outputs: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        with torch.no_grad():
            taught = teacher(*inputs)
        if not classifier:
            return functional.mse_loss(outputs, taught)
        t = options.temperature
        soft = functional.kl_div(
            functional.log_softmax(outputs / t, dim=-1), functional.softmax(taught / t, dim=-1), reduction="batchmean"
        ) * t * t
        if labels is None:
            return soft
        return (1 - options.label_weight) * soft + options.label_weight * functional.cross_entropy(outputs, labels)

    fit(model, data, loss, options)
    return export(model, signature, target)

