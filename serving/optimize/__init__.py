"""quiver.serving.optimize: turn one fp32 ONNX model into measured, accuracy-gated variants.

Public face: `optimize(OptimizeSettings)` and the choices it takes. Used by `quiver optimize`
(and, later, by the operator's optimization Jobs).
"""

from .accuracy import Metric, Statistic
from .datasets import Dataset, DatasetError, load_dataset
from .measure import SpeedBudget
from .pipeline import default_variants, optimize, variant_kinds
from .results import Outcome, Result
from .settings import OptimizeError, OptimizeSettings, VariantKind
from .quantize import Calibration, StaticQuantization
from .settings import Training

__all__ = [
    "Calibration",
    "Dataset",
    "DatasetError",
    "Metric",
    "OptimizeError",
    "OptimizeSettings",
    "Outcome",
    "Result",
    "SpeedBudget",
    "StaticQuantization",
    "Statistic",
    "Training",
    "VariantKind",
    "default_variants",
    "load_dataset",
    "optimize",
    "variant_kinds",
]
