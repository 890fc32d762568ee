"""What `quiver optimize` is asked to do: the variant kinds and the settings of one run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..manifest import VariantKind
from .accuracy import Metric, Statistic
from .measure import SpeedBudget
from .quantize import StaticQuantization


@dataclass(frozen=True)
class Training:
    """How the pruned and distilled variants train."""

    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 2e-3
    temperature: float = 4.0  # distillation: how much the teacher's outputs are softened
    label_weight: float = 0.5  # distillation: share of cross-entropy on labels, when there are labels
    seed: int = 0


class OptimizeError(Exception):
    """The request cannot be carried out; nothing was written to the store."""


@dataclass(frozen=True)
class OptimizeSettings:
    model: Path
    name: str
    version: str
    store: Path
    eval: Path
    calibration: Path | None = None
    variants: tuple[VariantKind, ...] | None = None  # None: the defaults for the model's kind
    max_accuracy_drop: float = 0.01
    gate: Statistic = Statistic.MEAN  # which statistic's drop max_accuracy_drop bounds
    metric: Metric = Metric.TOP1
    output: str | None = None  # the output to evaluate; the model's first by default
    static: StaticQuantization = field(default_factory=StaticQuantization)
    # pruned and distilled: data to train on (inputs, optional labels); distillation falls back
    # to the calibration inputs, the teacher supplying the targets.
    train: Path | None = None
    prune_ratio: float = 0.5
    student_width: float = 0.5
    student: Path | None = None  # a user's student model instead of a narrower teacher copy
    training: Training = field(default_factory=Training)
    speed: SpeedBudget = field(default_factory=SpeedBudget)
    force: bool = False
    expect_sha256: str | None = None  # refuse a source model with another digest
    encrypt_key: Path | None = None  # published variants written AES-256-GCM encrypted with this key
    sign_key: Path | None = None  # EC private key (PEM) that signs the version directory
