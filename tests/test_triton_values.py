"""Triton's model configuration and statistics as values, before any transport encodes them."""

from __future__ import annotations

import grpc
import numpy as np

from quiver.router import modelconfig
from quiver.router.statistics import Duration, InferenceStatistics
from quiver.serving import Batching, InferenceRequest, InferenceResult, Manifest, Replicas, TensorSpec, Variant


def manifest(batched: bool = True, **default: object) -> Manifest:
    first = -1 if batched else 2
    return Manifest(
        name="m",
        version="3",
        inputs=[TensorSpec(name="x", datatype="FP16", shape=[first, 8])],
        outputs=[TensorSpec(name="y", datatype="INT64", shape=[first, 1])],
        variants=[
            Variant(name="fp32", file="a.onnx", sha256="0" * 64),
            Variant(name="fp16", file="b.onnx", sha256="1" * 64, **default),
        ],
        default_variant="fp16",
    )


def test_the_config_describes_the_default_variant() -> None:
    gpu = {"device": "gpu", "pool": "gpu", "batching": Batching(max_batch_size=32, max_wait_ms=2.5), "replicas": Replicas(count=3)}
    config = modelconfig.describe(manifest(**gpu))
    assert (config.name, config.version, config.max_batch_size) == ("m", "3", 32)
    assert config.inputs == (modelconfig.TensorConfig("x", "TYPE_FP16", (8,)),)
    assert config.outputs == (modelconfig.TensorConfig("y", "TYPE_INT64", (1,)),)
    assert config.dynamic_batching == modelconfig.DynamicBatching(max_queue_delay_us=2500)
    assert config.instance_groups == (modelconfig.InstanceGroup("fp16", "KIND_GPU", 3),)


def test_a_model_that_does_not_batch_has_max_batch_size_0_and_whole_shapes() -> None:
    config = modelconfig.describe(manifest(batched=False))
    assert (config.max_batch_size, config.dynamic_batching) == (0, None)
    assert config.inputs[0].dims == (2, 8) and config.outputs[0].dims == (2, 1)


def request(rows: int) -> InferenceRequest:
    return InferenceRequest({"x": np.zeros((rows, 8), np.float16)})


def test_statistics_sum_the_calls_of_each_version() -> None:
    stats = InferenceStatistics(wall_clock=lambda: 1234.5)
    m, other = manifest(), manifest(batched=False)
    # Two requests that shared one batch, one alone, one failure.
    for rows in (2, 3):
        stats.finished(m, grpc.StatusCode.OK, 0.004, request(rows), InferenceResult({}, 2, 5, queue_s=0.001, compute_s=0.002))
    stats.finished(m, grpc.StatusCode.OK, 0.003, request(1), InferenceResult({}, 1, 1, queue_s=0.0, compute_s=0.001))
    stats.finished(m, grpc.StatusCode.INVALID_ARGUMENT, 0.005, request(1), None)
    got = stats.snapshot("m", "3")
    assert (got.inference_count, got.execution_count, got.last_inference_ms) == (6, 2, 1_234_500)
    assert got.success == Duration(3, 11_000_000) and got.fail == Duration(1, 5_000_000)
    assert got.queue == Duration(3, 2_000_000) and got.compute_infer == Duration(3, 5_000_000)
    assert got.compute_input == got.compute_output == Duration(3, 0)

    # A model that does not batch counts one inference per request, whatever its first dimension.
    stats.finished(other.model_copy(update={"version": "4"}), grpc.StatusCode.OK, 0.001, request(2), InferenceResult({}, 1, 2))
    assert stats.snapshot("m", "4").inference_count == 1


def test_statistics_select_versions_as_triton_does() -> None:
    stats = InferenceStatistics()
    served = {"a": ["1", "2"], "b": ["1"]}

    def keys(name: str = "", version: str = "") -> list[tuple[str, str]]:
        return [(s.name, s.version) for s in stats.served(served, name, version)]

    assert keys() == [("a", "1"), ("a", "2"), ("b", "1")]
    assert keys("a") == [("a", "1"), ("a", "2")]
    assert keys("a", "2") == [("a", "2")]
    assert stats.snapshot("b", "1").success == Duration()  # never called: zeros
