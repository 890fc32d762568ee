"""Triton's model configuration of a served model version, derived from its manifest.

Tools built for Triton (perf_analyzer, model analyzer) read it before they send a request: how
many rows a request may carry, each tensor's type and shape, how the server batches. The servicer
encodes it for gRPC (router/triton_grpc.py); nothing here knows a transport, so a REST transport
can encode the same value as Triton's JSON. Names are Triton's (`TYPE_FP32`, `KIND_GPU`).

A version has several variants; the configuration describes its default variant, the one a
request without routing hints is sent to. Its batching and replica count are what a client sees
when it asks for nothing in particular.
"""

from __future__ import annotations

from dataclasses import dataclass

from quiver.serving import Device, Manifest, TensorSpec, Variant


@dataclass(frozen=True)
class TensorConfig:
    name: str
    data_type: str  # Triton's name: TYPE_FP32, TYPE_INT64, ...
    dims: tuple[int, ...]  # without the batch dimension when max_batch_size > 0; -1: variable


@dataclass(frozen=True)
class InstanceGroup:
    name: str
    kind: str  # KIND_CPU or KIND_GPU
    count: int


@dataclass(frozen=True)
class DynamicBatching:
    # Quiver's replicas run whatever has queued, up to max_batch_size, without preferred sizes:
    # what Triton does when a configuration names none, so none are listed.
    max_queue_delay_us: int


@dataclass(frozen=True)
class ModelConfig:
    name: str
    version: str
    platform: str
    backend: str
    max_batch_size: int  # 0: requests are not batched, dims are whole shapes
    inputs: tuple[TensorConfig, ...]
    outputs: tuple[TensorConfig, ...]
    dynamic_batching: DynamicBatching | None
    instance_groups: tuple[InstanceGroup, ...]


def describe(manifest: Manifest) -> ModelConfig:
    """The configuration of `manifest`'s version as its default variant serves it."""
    variant = manifest.default
    # Triton batches only along a leading variable dimension that every tensor has; so does Quiver.
    batched = manifest.batchable
    return ModelConfig(
        name=manifest.name,
        version=manifest.version,
        platform=manifest.platform,
        backend="onnxruntime" if manifest.platform == "onnxruntime_onnx" else "",
        max_batch_size=variant.batching.max_batch_size if batched else 0,
        inputs=tuple(_tensor(spec, batched) for spec in manifest.inputs),
        outputs=tuple(_tensor(spec, batched) for spec in manifest.outputs),
        dynamic_batching=DynamicBatching(round(1000 * variant.batching.max_wait_ms)) if batched else None,
        instance_groups=(_instances(variant),),
    )


def _tensor(spec: TensorSpec, batched: bool) -> TensorConfig:
    return TensorConfig(spec.name, f"TYPE_{spec.datatype.value}", tuple(spec.shape[1:] if batched else spec.shape))


def _instances(variant: Variant) -> InstanceGroup:
    kind = "KIND_GPU" if variant.device is Device.GPU else "KIND_CPU"
    return InstanceGroup(variant.name, kind, variant.replicas.count)
