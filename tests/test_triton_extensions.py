"""Triton's protocol extensions through tritonclient: a model's configuration and its inference statistics.

Statistics are the router's since it started, and the session's server has served other tests:
each test reads them before and after its own requests and checks the difference.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton

from quiver.serving import read_version

from .models import PAIR_TABLE
from .serverproc import ServerProcess


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.address)


def test_server_metadata_lists_the_extensions(client: triton.InferenceServerClient) -> None:
    assert set(client.get_server_metadata().extensions) == {"model_configuration", "statistics", "system_shared_memory", "schedule_policy", "binary_tensor_data", "model_repository"}


def test_model_config_describes_the_default_variant(client: triton.InferenceServerClient, store: Path) -> None:
    manifest = read_version(store / "example" / "1").manifest
    default = manifest.default
    config = client.get_model_config("example").config
    assert (config.name, config.platform, config.backend) == ("example", "onnxruntime_onnx", "onnxruntime")
    assert config.max_batch_size == default.batching.max_batch_size > 0
    # Without the batch dimension, as Triton writes them when max_batch_size > 0.
    assert [(t.name, triton.model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in config.input] == [
        ("input", "TYPE_FP32", [64])
    ]
    assert [(t.name, triton.model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in config.output] == [
        ("output", "TYPE_FP32", [10])
    ]
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert config.dynamic_batching.max_queue_delay_microseconds == round(1000 * default.batching.max_wait_ms)
    [group] = config.instance_group
    assert (group.name, group.count) == (default.name, default.replicas.count)
    assert group.kind == triton.model_config_pb2.ModelInstanceGroup.KIND_CPU


def test_model_config_of_a_gpu_variant_and_of_a_version(client: triton.InferenceServerClient, store: Path) -> None:
    tuned = read_version(store / "tuned" / "1").manifest
    [group] = client.get_model_config("tuned").config.instance_group
    expected = "KIND_GPU" if tuned.default.device.value == "gpu" else "KIND_CPU"
    assert (group.name, triton.model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind)) == (tuned.default.name, expected)

    config = client.get_model_config("pair", "1").config
    assert [(t.name, list(t.dims)) for t in config.input] == [("x", [3]), ("k", [2])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("total", [1]), ("looked_up", [2])]


@pytest.mark.parametrize("call", ["get_model_config", "get_inference_statistics"])
def test_an_unknown_model_or_version_is_not_found(client: triton.InferenceServerClient, call: str) -> None:
    for args in (("nope",), ("pair", "3")):
        with pytest.raises(triton.InferenceServerException) as error:
            getattr(client, call)(*args)
        assert error.value.status() == "StatusCode.NOT_FOUND"


def pair_tensors(rows: int, bad: bool = False) -> list[triton.InferInput]:
    feeds = {
        "x": np.ones((rows, 3), dtype=np.float32),
        # An index outside the table: ONNX Runtime refuses the request in the replica.
        "k": np.full((rows, 2), 999 if bad else len(PAIR_TABLE) - 1, dtype=np.int64),
    }
    tensors = []
    for name, datatype in (("x", "FP32"), ("k", "INT64")):
        tensor = triton.InferInput(name, list(feeds[name].shape), datatype)
        tensor.set_data_from_numpy(feeds[name])
        tensors.append(tensor)
    return tensors


def stats_of(client: triton.InferenceServerClient, model: str, version: str) -> object:
    [stats] = client.get_inference_statistics(model, version).model_stats
    assert (stats.name, stats.version) == (model, version)
    return stats


def test_statistics_count_what_was_sent(client: triton.InferenceServerClient) -> None:
    before, other = stats_of(client, "pair", "2"), stats_of(client, "pair", "1")
    started_ms = time.time() * 1000
    rows = [1, 3, 2, 5]
    for n in rows:  # one at a time: each runs in a batch of its own
        client.infer("pair", pair_tensors(n), model_version="2")
    for _ in range(2):
        with pytest.raises(triton.InferenceServerException) as error:
            client.infer("pair", pair_tensors(1, bad=True), model_version="2")
        assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    after = stats_of(client, "pair", "2")

    def grew(field: str) -> tuple[int, int]:
        new, old = getattr(after.inference_stats, field), getattr(before.inference_stats, field)
        return new.count - old.count, new.ns - old.ns

    assert grew("success")[0] == len(rows) and grew("success")[1] > 0
    assert grew("fail")[0] == 2 and grew("fail")[1] > 0
    assert grew("queue")[0] == len(rows) and grew("queue")[1] > 0
    assert grew("compute_infer")[0] == len(rows) and grew("compute_infer")[1] > 0
    # Not timed apart from the ONNX Runtime call; counted, so the three compute counts agree.
    assert grew("compute_input") == grew("compute_output") == (len(rows), 0)
    assert after.inference_count - before.inference_count == sum(rows)  # rows, as Triton counts them
    assert after.execution_count - before.execution_count == len(rows)
    assert started_ms - 1000 <= after.last_inference <= time.time() * 1000 + 1000

    # The other version was not called: its statistics did not move.
    assert stats_of(client, "pair", "1") == other


def test_statistics_of_every_version_and_every_model(client: triton.InferenceServerClient) -> None:
    versions = [(s.name, s.version) for s in client.get_inference_statistics("pair").model_stats]
    assert versions == [("pair", "1"), ("pair", "2")]
    every = {(s.name, s.version) for s in client.get_inference_statistics().model_stats}
    assert every == {("example", "1"), ("pair", "1"), ("pair", "2"), ("tuned", "1")}
