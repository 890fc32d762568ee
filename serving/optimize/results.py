"""What one run of the pipeline produced: each variant's outcome, and the published manifest."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..manifest import Manifest, Metrics
from .settings import VariantKind


@dataclass(frozen=True)
class Outcome:
    """One variant's result, published or not, and why."""

    kind: VariantKind
    published: bool
    reason: str
    size_bytes: int = 0
    metrics: Metrics | None = None


@dataclass(frozen=True)
class Result:
    manifest: Manifest
    directory: Path
    reference_score: float  # fp32's mean; its tail, over the same units as the variants':
    outcomes: list[Outcome]
    reference_p5: float | None = None
    reference_min: float | None = None
