"""The model manifest: what a model version is, which variants it has, and where they run.

`STORE/<model>/<version>/manifest.json` holds one `Manifest`. It is validated here, at the
edge, so everything downstream (the replicas, the router) works with typed, checked values.
"""

from __future__ import annotations

import enum
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .datatypes import Datatype

# Names end up in Ray Serve application names and gRPC parameters: keep them plain.
Name = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Spec):
    """One model input or output; -1 in `shape` marks a variable-size dimension."""

    name: Annotated[str, Field(min_length=1)]
    datatype: Datatype
    shape: list[Annotated[int, Field(ge=-1)]]


class Precision(str, enum.Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


class Device(str, enum.Enum):
    """The hardware a variant's ONNX Runtime session targets; it picks the execution providers."""

    CPU = "cpu"
    GPU = "gpu"


class VariantKind(str, enum.Enum):
    """The kinds of variant `quiver optimize` makes; each is published under its kind's name."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8_DYNAMIC = "int8-dynamic"
    INT8_STATIC = "int8-static"
    PRUNED = "pruned"
    DISTILLED = "distilled"

    @property
    def precision(self) -> Precision:
        return {VariantKind.FP16: Precision.FP16, VariantKind.INT8_DYNAMIC: Precision.INT8,
                VariantKind.INT8_STATIC: Precision.INT8}.get(self, Precision.FP32)

    @property
    def device(self) -> Device:
        return Device.GPU if self is VariantKind.FP16 else Device.CPU


class Batching(_Spec):
    """Dynamic batching of concurrent requests inside one replica.

    `max_batch_size` counts rows along the batch axis (as Triton's does), not requests. With
    `max_wait_ms` at 0 a batch is whatever queued while the previous one ran: no added latency
    at low load, large batches under load.
    """

    max_batch_size: Annotated[int, Field(ge=1, le=65536)] = 64
    max_wait_ms: Annotated[float, Field(ge=0, le=10_000)] = 0.0


class Autoscaling(_Spec):
    """Serve's replica autoscaling for a variant: between the bounds, aiming at a load per replica."""

    min_replicas: Annotated[int, Field(ge=0, le=1024)] = 1
    max_replicas: Annotated[int, Field(ge=1, le=1024)] = 1
    # Requests in flight per replica that Serve aims at; with batching a replica takes a whole
    # batch at once, so this sits near the batch size, not near 1.
    target_ongoing_requests: Annotated[float, Field(gt=0)] = 32
    upscale_delay_s: Annotated[float, Field(ge=0)] = 3.0
    downscale_delay_s: Annotated[float, Field(ge=0)] = 60.0

    @model_validator(mode="after")
    def _bounds_in_order(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})")
        return self


class Replicas(_Spec):
    """How many replicas of a variant run, and what each one reserves."""

    count: Annotated[int, Field(ge=1, le=1024)] = 1
    num_cpus: Annotated[float, Field(gt=0, le=256)] = 1.0
    num_gpus: Annotated[float, Field(ge=0, le=16)] = 0.0
    # Serve queues at most this many requests per replica before the caller waits; it must
    # be well above the batch size or Serve's backpressure caps the batches.
    max_ongoing_requests: Annotated[int, Field(ge=1, le=100_000)] = 1024
    # The router sheds load beyond this many requests in flight per replica (RESOURCE_EXHAUSTED
    # with a retry hint) rather than queueing without bound.
    max_queued_requests: Annotated[int, Field(ge=1, le=100_000)] = 256
    # When set, Serve scales between its bounds and `count` is where it starts.
    autoscaling: Autoscaling | None = None

    @model_validator(mode="after")
    def _count_within_autoscaling(self) -> Replicas:
        scaling = self.autoscaling
        if scaling and not scaling.min_replicas <= self.count <= scaling.max_replicas:
            raise ValueError(
                f"count ({self.count}) must lie within autoscaling.min_replicas ({scaling.min_replicas}) "
                f"and autoscaling.max_replicas ({scaling.max_replicas})"
            )
        return self


class Metrics(_Spec):
    """What `quiver optimize` measured for a variant: accuracy on the eval set and speed here.

    `accuracy` is the mean over examples; the tail fields (absent from manifests written before
    them) are over units, examples for cosine and classes for top1; serving/optimize/accuracy.py
    says why, and how a tail drop is taken.
    """

    metric: Annotated[str, Field(min_length=1)]  # top1, top1-agreement or cosine
    accuracy: float
    accuracy_drop: float  # against the fp32 reference model, in the same metric
    tail_unit: Literal["example", "class"] | None = None
    accuracy_p5: float | None = None  # 5th percentile of the per-unit scores
    accuracy_min: float | None = None  # the worst unit's score
    accuracy_drop_p5: float | None = None  # 95th percentile of the per-unit drops against fp32
    accuracy_drop_min: float | None = None  # the largest per-unit drop against fp32
    gate: Literal["mean", "p5", "min"] | None = None  # the statistic whose drop was held to the limit
    max_abs_error: Annotated[float, Field(ge=0)]  # of the evaluated output, against fp32
    p50_ms: Annotated[float, Field(ge=0)]  # batch 1
    p99_ms: Annotated[float, Field(ge=0)]
    throughput: Annotated[float, Field(ge=0)]  # rows per second at throughput_batch
    throughput_batch: Annotated[int, Field(ge=1)]

    def drop(self, statistic: str) -> float | None:
        """The drop in `statistic` (mean, p5 or min); None where the manifest predates the tail."""
        return {"mean": self.accuracy_drop, "p5": self.accuracy_drop_p5, "min": self.accuracy_drop_min}[statistic]


class ShadowMetric(str, enum.Enum):
    """How the router compares a variant's output with the reference's, row by row (router/agreement.py)."""

    TOP1 = "top1"  # the same class (argmax over the last axis)
    COSINE = "cosine"  # cosine similarity of the rows
    TOLERANCE = "tolerance"  # every element within `tolerance` of the reference's (regression outputs)


class Shadow(_Spec):
    """Live comparison of a variant with its version's reference variant (router/shadow.py).

    A sampled share of the requests the variant answers is sent again to the reference in the
    background; 0 turns it off. The agreement's lower bound, once over `min_samples` rows, is
    the accuracy routing uses; a variant whose live accuracy falls more than `margin` below
    its offline one is reported, and routed around when `exclude` is set.
    """

    sample_rate: Annotated[float, Field(ge=0, le=1)] = 0.01
    metric: ShadowMetric | None = None  # None: cosine if measured so offline, top1 if the output has classes, else tolerance
    tolerance: Annotated[float, Field(gt=0)] = 1e-3
    output: str | None = None  # the output compared; None: the model's first
    min_samples: Annotated[int, Field(ge=1)] = 200
    margin: Annotated[float, Field(ge=0, le=1)] = 0.02
    exclude: bool = False


class Threads(_Spec):
    """ONNX Runtime's thread pools in one replica (serving/runtime.py)."""

    intra_op: Annotated[int, Field(ge=1, le=256)] | None = None  # None: one per CPU the replica reserves
    inter_op: Annotated[int, Field(ge=1, le=256)] = 1


class ServingSettings(_Spec):
    """One point of `quiver tune`'s search: how a variant's replicas are run (serving/tune/)."""

    intra_op_threads: Annotated[int, Field(ge=1, le=256)]
    inter_op_threads: Annotated[int, Field(ge=1, le=256)] = 1
    max_batch_size: Annotated[int, Field(ge=1, le=65536)]
    max_wait_ms: Annotated[float, Field(ge=0, le=10_000)] = 0.0
    replicas: Annotated[int, Field(ge=1, le=1024)] = 1
    cpus_per_replica: Annotated[float, Field(gt=0, le=256)] = 1.0

    def apply(self, variant: Variant) -> Variant:
        """`variant` run with these settings (the rest of its replicas' spec kept). An autoscaled
        variant keeps its bounds: the replicas it starts with are the tuned count, within them."""
        scaling = variant.replicas.autoscaling
        count = min(max(self.replicas, scaling.min_replicas), scaling.max_replicas) if scaling else self.replicas
        return variant.model_copy(update={
            "threads": Threads(intra_op=self.intra_op_threads, inter_op=self.inter_op_threads),
            "batching": Batching(max_batch_size=self.max_batch_size, max_wait_ms=self.max_wait_ms),
            "replicas": variant.replicas.model_copy(update={"count": max(count, 1), "num_cpus": self.cpus_per_replica}),
        })


class BatchLatency(_Spec):
    """Latency of one request of `batch_size` rows through an idle replica."""

    batch_size: Annotated[int, Field(ge=1)]
    p50_ms: Annotated[float, Field(ge=0)]
    p99_ms: Annotated[float, Field(ge=0)]


class Profile(_Spec):
    """What `quiver tune` chose for a variant and measured through a replica, on `pool`.

    `p50_ms`, `p99_ms` and `throughput` are at the load that stood for the chosen settings:
    the most rows/s within the SLO, with `concurrency` clients in a closed loop sending one-row
    requests; `latency` is per batch size, one request at a time.
    """

    pool: Name
    settings: ServingSettings
    objective: Literal["throughput", "latency"]
    slo_p99_ms: Annotated[float, Field(gt=0)] | None = None
    meets_slo: bool = True  # False: no point met the SLO and the best p99 was taken
    concurrency: Annotated[int, Field(ge=1)]
    p50_ms: Annotated[float, Field(ge=0)]
    p99_ms: Annotated[float, Field(ge=0)]
    throughput: Annotated[float, Field(ge=0)]  # rows per second, all replicas
    throughput_per_replica: Annotated[float, Field(ge=0)]
    latency: list[BatchLatency] = []

    @model_validator(mode="after")
    def _meets_slo_is_true(self) -> Profile:
        if self.slo_p99_ms is not None and self.meets_slo and self.p99_ms > self.slo_p99_ms:
            raise ValueError(f"meets_slo is true but p99_ms ({self.p99_ms}) is above slo_p99_ms ({self.slo_p99_ms})")
        return self


class Variant(_Spec):
    """One optimized form of the model (a file in the version directory) and where it runs."""

    name: Name
    precision: Precision = Precision.FP32
    file: Annotated[str, Field(min_length=1)]
    sha256: Sha256
    pool: Name = "cpu"
    device: Device = Device.CPU
    batching: Batching = Batching()
    replicas: Replicas = Replicas()
    metrics: Metrics | None = None
    # "aes-256-gcm": the file is encrypted at rest (serving/crypto.py); replicas need the key.
    encryption: Literal["aes-256-gcm"] | None = None
    shadow: Shadow | None = None  # None: Shadow()'s defaults (or the router's --shadow-rate)
    threads: Threads = Threads()
    # Written by `quiver tune` with the settings it chose (also set in threads, batching, replicas).
    profile: Profile | None = None

    @model_validator(mode="after")
    def _file_stays_inside_version(self) -> Variant:
        if self.file.startswith("/") or ".." in re.split(r"[/\\]", self.file):
            raise ValueError(f"file {self.file!r} must be a relative path inside the version directory")
        return self


class Placement(_Spec):
    """Where and how a deployment runs a published variant, overriding what its manifest says.

    The operator sets it from a ModelDeployment's `spec.placement`; the manifest stays as
    `quiver optimize` wrote (and signed) it.
    """

    pool: Name | None = None
    replicas: Replicas | None = None
    batching: Batching | None = None
    shadow: Shadow | None = None
    threads: Threads | None = None

    def apply(self, variant: Variant) -> Variant:
        return variant.model_copy(update={k: v for k, v in self if v is not None})


class Manifest(_Spec):
    """A model version: its signature and its variants."""

    name: Name
    version: Name
    platform: str = "onnxruntime_onnx"
    inputs: Annotated[list[TensorSpec], Field(min_length=1)]
    outputs: Annotated[list[TensorSpec], Field(min_length=1)]
    variants: Annotated[list[Variant], Field(min_length=1)]
    default_variant: Name | None = None
    # What the other variants are compared with on live traffic; None: the one named fp32, if any.
    reference_variant: Name | None = None

    @model_validator(mode="after")
    def _names_are_consistent(self) -> Manifest:
        for field in ("inputs", "outputs", "variants"):
            names = [item.name for item in getattr(self, field)]
            if len(names) != len(set(names)):
                raise ValueError(f"{field}: names must be unique, got {names}")
        if self.default_variant is not None and self.default_variant not in self.variant_names:
            raise ValueError(
                f"default_variant {self.default_variant!r} is not one of variants {self.variant_names}"
            )
        if self.reference_variant is not None and self.reference_variant not in self.variant_names:
            raise ValueError(f"reference_variant {self.reference_variant!r} is not one of variants {self.variant_names}")
        for index, variant in enumerate(self.variants):
            if variant.shadow is not None:
                shadow_metric(self, variant, f"variants[{index}].shadow")
        return self

    @property
    def reference(self) -> Variant | None:
        name = self.reference_variant or ("fp32" if "fp32" in self.variant_names else None)
        return None if name is None else self.variant(name)

    @property
    def variant_names(self) -> list[str]:
        return [variant.name for variant in self.variants]

    @property
    def default(self) -> Variant:
        return self.variant(self.default_variant or self.variants[0].name)

    def variant(self, name: str) -> Variant:
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise KeyError(name)

    @property
    def batchable(self) -> bool:
        """Whether requests can be joined along axis 0: every tensor has a variable first dim."""
        return all(spec.shape and spec.shape[0] == -1 for spec in (*self.inputs, *self.outputs))


_NOT_NUMBERS = {Datatype.BOOL}


def shadow_metric(manifest: Manifest, variant: Variant, field: str = "shadow") -> tuple[TensorSpec, ShadowMetric]:
    """The output a variant's shadow comparison reads and the metric it uses; ValueError naming
    `field` when the outputs cannot support them."""
    shadow = variant.shadow or Shadow()
    name = shadow.output or manifest.outputs[0].name
    spec = next((spec for spec in manifest.outputs if spec.name == name), None)
    if spec is None:
        raise ValueError(f"{field}.output: {name!r} is not one of the outputs {[o.name for o in manifest.outputs]}")
    if spec.datatype in _NOT_NUMBERS:
        raise ValueError(f"{field}.output: {name!r} is {spec.datatype.value}; shadow comparisons need numbers")
    classes = bool(spec.shape) and spec.shape[-1] != 1 and len(spec.shape) >= 2
    metric = shadow.metric
    if metric is None:
        offline = variant.metrics.metric if variant.metrics else None
        metric = ShadowMetric.COSINE if offline == "cosine" else ShadowMetric.TOP1 if classes else ShadowMetric.TOLERANCE
    if metric is ShadowMetric.TOP1 and not classes:
        raise ValueError(f"{field}.metric: top1 needs an output with a class axis; {name!r} has shape {spec.shape}")
    return spec, metric
