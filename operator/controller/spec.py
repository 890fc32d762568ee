"""The ModelDeployment spec as typed models: what a user asks for, validated at the edge.

The CRD's schema (helm/quiver/crds/) rejects malformed objects at the API server; these models
validate again here, where the operator reads a spec (an emulator or an old CRD may let anything
through), and add the cross-field checks a schema cannot express. Errors name the field path.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from quiver.serving.manifest import Autoscaling, Batching, Name, Threads, Variant, VariantKind
from quiver.serving.manifest import Placement as ServePlacement

Uri = Annotated[str, Field(pattern=r"^(file://)?/\S+$")]


class SpecError(ValueError):
    """The spec cannot work as written; the message names the field."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True)


def local_path(uri: str) -> Path:
    """The path on the shared model volume a `file://` URI or absolute path names."""
    return Path(uri.removeprefix("file://"))


class ModelSource(_Spec):
    name: Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,40}[a-z0-9])?$")]
    version: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]
    source: Uri
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None


class Optimization(_Spec):
    variants: Annotated[list[VariantKind], Field(min_length=1)] = [VariantKind.FP32]
    eval_data: Uri
    calibration_data: Uri | None = None
    train_data: Uri | None = None
    max_accuracy_drop: Annotated[float, Field(ge=0, le=1)] = 0.01
    # The statistic maxAccuracyDrop bounds: the mean, or the tail (serving/optimize/accuracy.py).
    gate: Annotated[str, Field(pattern="^(mean|p5|min)$")] = "mean"
    metric: Annotated[str, Field(pattern="^(top1|cosine)$")] = "top1"
    target: Annotated[str, Field(pattern="^(cpu|gpu)$")] = "cpu"

    @model_validator(mode="after")
    def _data_for_each_variant(self) -> Optimization:
        if VariantKind.INT8_STATIC in self.variants and self.calibration_data is None:
            raise ValueError("variants has int8-static, which needs calibrationData")
        return self


class BatchingSpec(_Spec):
    max_batch_size: Annotated[int, Field(ge=1, le=65536)] | None = None
    max_wait_ms: Annotated[float, Field(ge=0, le=10_000)] | None = None


class VariantPlacement(_Spec):
    """Where a variant runs and, for each serving setting given, its value. A setting left out
    is the manifest's: what `quiver tune` chose when the version was tuned, else the defaults."""

    variant: Name
    pool: Name
    min_replicas: Annotated[int, Field(ge=0, le=1024)] | None = None
    max_replicas: Annotated[int, Field(ge=1, le=1024)] | None = None
    target_ongoing_requests: Annotated[float, Field(gt=0)] | None = None
    num_cpus: Annotated[float, Field(gt=0, le=256)] | None = None
    num_gpus: Annotated[float, Field(ge=0, le=16)] | None = None
    max_queued_requests: Annotated[int, Field(ge=1, le=100_000)] | None = None
    intra_op_threads: Annotated[int, Field(ge=1, le=256)] | None = None
    inter_op_threads: Annotated[int, Field(ge=1, le=256)] | None = None
    batching: BatchingSpec = BatchingSpec()

    @model_validator(mode="after")
    def _bounds_in_order(self) -> VariantPlacement:
        if self.min_replicas is not None and self.max_replicas is not None and self.min_replicas > self.max_replicas:
            raise ValueError(f"minReplicas ({self.min_replicas}) is above maxReplicas ({self.max_replicas})")
        return self

    def serve_placement(self, variant: Variant) -> ServePlacement:
        """What the Serve application and the router use for `variant` (as its manifest has it):
        the settings given here over the manifest's; autoscaling when the replica bounds differ."""
        replicas, scaling = variant.replicas, variant.replicas.autoscaling
        low = self.min_replicas if self.min_replicas is not None else scaling.min_replicas if scaling else None
        high = self.max_replicas if self.max_replicas is not None else scaling.max_replicas if scaling else None
        # A bound given alone moves the manifest's count only as far as it must.
        low = min(replicas.count, high) if low is None and high is not None else low
        low = replicas.count if low is None else low
        high = max(replicas.count, low) if high is None else high
        high = max(high, low) if self.max_replicas is None else high  # minReplicas alone raises the manifest's max
        target = self.target_ongoing_requests or (scaling.target_ongoing_requests if scaling else Autoscaling().target_ongoing_requests)
        given = {k: v for k, v in (("num_cpus", self.num_cpus), ("num_gpus", self.num_gpus),
                                    ("max_queued_requests", self.max_queued_requests)) if v is not None}
        return ServePlacement(
            pool=self.pool,
            replicas=replicas.model_copy(update={
                **given,
                "count": min(max(replicas.count, low, 1), high),
                "autoscaling": Autoscaling(min_replicas=low, max_replicas=high, target_ongoing_requests=target) if high > low else None,
            }),
            batching=Batching(
                max_batch_size=self.batching.max_batch_size or variant.batching.max_batch_size,
                max_wait_ms=variant.batching.max_wait_ms if self.batching.max_wait_ms is None else self.batching.max_wait_ms,
            ),
            threads=Threads(
                intra_op=self.intra_op_threads or variant.threads.intra_op,
                inter_op=self.inter_op_threads or variant.threads.inter_op,
            ),
        )


class Strategy(str, enum.Enum):
    CANARY = "Canary"
    IMMEDIATE = "Immediate"


class Gates(_Spec):
    max_error_rate: Annotated[float, Field(ge=0, le=1)] = 0.01
    max_p99_latency_ms: Annotated[float, Field(gt=0)] | None = None
    min_requests: Annotated[int, Field(ge=1)] = 20
    # The Shadow step's: the 95 % lower bound of the new version's agreement with the serving one.
    min_agreement: Annotated[float, Field(ge=0, le=1)] | None = None


class ShadowStep(_Spec):
    """A first step at 0 % (operator/controller/gates.py): the new version answers mirrored copies
    of a `sample_rate` share of the serving version's requests, compared with what clients got."""

    sample_rate: Annotated[float, Field(gt=0, le=1)] = 0.1
    min_samples: Annotated[int, Field(ge=1, le=1_000_000)] = 200  # rows compared before the agreement is judged


class Rollout(_Spec):
    strategy: Strategy = Strategy.CANARY
    steps: Annotated[list[Annotated[int, Field(ge=1, le=100)]], Field(min_length=1, max_length=20)] = [10, 50, 100]
    interval_seconds: Annotated[int, Field(ge=1, le=86400)] = 60
    shadow: ShadowStep | None = None  # None: no Shadow step
    gates: Gates = Gates()
    on_breach: Annotated[str, Field(pattern="^Rollback$")] = "Rollback"

    @model_validator(mode="after")
    def _steps_climb_to_100(self) -> Rollout:
        if any(b <= a for a, b in zip(self.steps, self.steps[1:])) or self.steps[-1] != 100:
            raise ValueError(f"steps {self.steps} must rise and end at 100")
        if self.gates.min_agreement is not None and self.shadow is None:
            raise ValueError("gates.minAgreement is judged in the Shadow step: it needs rollout.shadow")
        return self

    @property
    def weights(self) -> list[int]:
        """The new version's share at each step (Immediate: one step of 100)."""
        return [100] if self.strategy is Strategy.IMMEDIATE else list(self.steps)


class Tuning(_Spec):
    """`quiver tune` as a Job after the optimization, before deploying: the manifest it records
    is what the variants then run with, where spec.placement sets nothing (docs/tuning.md)."""

    slo_p99_ms: Annotated[float, Field(gt=0)] | None = None
    objective: Annotated[str, Field(pattern="^(throughput|latency)$")] = "throughput"
    budget_seconds: Annotated[int, Field(ge=10, le=86400)] = 120  # per variant
    variants: list[Name] | None = None  # None: every published variant
    cpus: Annotated[int, Field(ge=1, le=256)] | None = None  # the pod's CPUs, tuned for; None: its node's
    node_selector: dict[str, str] = {}  # a node of the pool the variants run on


class Routing(_Spec):
    default_variant: Name | None = None


class Capture(_Spec):
    """The model's share of live requests the routers capture for recalibration, and its disk
    per version (serving/capture.py); it takes effect where the routers capture (the chart's router.capture)."""

    rate: Annotated[float, Field(ge=0, le=1)]
    max_mb: Annotated[float | None, Field(gt=0, le=1_000_000, alias="maxMB")] = None  # None: the routers' --capture-max-mb


class ModelDeploymentSpec(_Spec):
    model: ModelSource
    optimization: Optimization
    placement: list[VariantPlacement] = []
    rollout: Rollout = Rollout()
    routing: Routing = Routing()
    capture: Capture | None = None
    tuning: Tuning | None = None

    @model_validator(mode="after")
    def _names_refer_to_variants(self) -> ModelDeploymentSpec:
        wanted = {kind.value for kind in self.optimization.variants}
        for index, placed in enumerate(self.placement):
            if placed.variant not in wanted:
                raise ValueError(f"placement[{index}].variant {placed.variant!r} is not one of optimization.variants {sorted(wanted)}")
        names = [placed.variant for placed in self.placement]
        if len(names) != len(set(names)):
            raise ValueError(f"placement: each variant at most once, got {names}")
        for name in (self.tuning.variants or []) if self.tuning else []:
            if name not in wanted:
                raise ValueError(f"tuning.variants {name!r} is not one of optimization.variants {sorted(wanted)}")
        if self.routing.default_variant and self.routing.default_variant not in wanted:
            raise ValueError(
                f"routing.defaultVariant {self.routing.default_variant!r} is not one of optimization.variants {sorted(wanted)}"
            )
        return self

    def placement_of(self, variant: str) -> VariantPlacement | None:
        return next((placed for placed in self.placement if placed.variant == variant), None)


def parse_spec(spec: dict[str, Any]) -> ModelDeploymentSpec:
    """The typed spec, or SpecError naming each field that is wrong (`spec.placement[1].maxReplicas`)."""
    try:
        return ModelDeploymentSpec.model_validate(spec)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"])
            problems.append(f"spec{path}: {error['msg']}")
        raise SpecError("; ".join(problems)) from None
