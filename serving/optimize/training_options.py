"""How the pruned and distilled variants train; importable without torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Training:
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 2e-3
    temperature: float = 4.0  # distillation: how much the teacher's outputs are softened
    label_weight: float = 0.5  # distillation: share of cross-entropy on labels, when there are labels
    seed: int = 0
