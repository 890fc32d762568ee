"""Common ground of the variants that train: ONNX ↔ torch, structured shrinking, the fit loop.

Needs the `train` extra (torch, onnx2torch, torch-pruning) and is imported only when a pruned
or distilled variant is asked for: serving never loads torch. The graph comes into torch with
onnx2torch; channels and neurons are removed with torch-pruning's dependency graph, so every
layer that consumes a pruned output shrinks with it and the result is a smaller dense model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
import torch_pruning
from onnx2torch import convert
from torch import nn

from ..manifest import Manifest
from .datasets import Dataset
from .settings import Training

# Layers whose outputs can be thinned; the last of them produces the model's outputs and keeps its width.
_PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

Loss = Callable[[list[torch.Tensor], torch.Tensor, torch.Tensor | None], torch.Tensor]


def to_torch(path: Path) -> nn.Module:
    return convert(onnx.load(str(path)))


def shrink(module: nn.Module, signature: Manifest, ratio: float) -> nn.Module:
    """Remove `ratio` of the channels of every prunable layer but the last, by L1 magnitude."""
    layers = [layer for layer in module.modules() if isinstance(layer, _PRUNABLE)]
    pruner = torch_pruning.pruner.MagnitudePruner(
        module,
        example_inputs(signature),
        importance=torch_pruning.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio,
        ignored_layers=layers[-1:],
    )
    pruner.step()
    return module


def fit(model: nn.Module, data: Dataset, loss: Loss, options: Training) -> None:
    """Train `model` on `data`, minimising `loss(inputs, outputs, labels or None)` with Adam."""
    torch.manual_seed(options.seed)
    inputs = [torch.from_numpy(np.ascontiguousarray(array)) for array in data.inputs.values()]
    labels = torch.from_numpy(data.labels) if data.labels is not None else None
    optimizer = torch.optim.Adam(model.parameters(), lr=options.learning_rate)
    model.train()
    for _ in range(options.epochs):
        for rows in torch.randperm(data.rows).split(options.batch_size):
            batch = [tensor[rows] for tensor in inputs]
            optimizer.zero_grad()
            loss(batch, model(*batch), labels[rows] if labels is not None else None).backward()
            optimizer.step()
    model.eval()


def export(model: nn.Module, signature: Manifest, path: Path) -> Path:
    """Write `model` as ONNX with the signature's names, its variable dimensions kept variable."""
    dynamic = tuple({axis: torch.export.Dim.DYNAMIC for axis, dim in enumerate(spec.shape) if dim == -1} for spec in signature.inputs)
    torch.onnx.export(
        model.eval(),
        tuple(example_inputs(signature)),
        str(path),
        input_names=[spec.name for spec in signature.inputs],
        output_names=[spec.name for spec in signature.outputs],
        dynamic_shapes=dynamic,
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    return path


def example_inputs(signature: Manifest) -> list[torch.Tensor]:
    return [
        torch.zeros([2 if dim == -1 else dim for dim in spec.shape], dtype=torch.from_numpy(np.zeros(0, spec.datatype.numpy)).dtype)
        for spec in signature.inputs
    ]
