"""The REST door end to end: tritonclient.http and plain JSON → router → Ray Serve replica → ONNX Runtime.

Same server as the gRPC tests (the session's `quiver serve`): what one door answers, the other
answers alike — results, routing parameters, errors (status class and message) and metrics.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton
from prometheus_client.parser import text_string_to_metric_families

from .conftest import MAX_REQUEST_MB
from .models import PAIR_TABLE, reference
from .serverproc import ServerProcess


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> triton.InferenceServerClient:
    assert server.http_url.startswith("http://"), server.http_url
    return triton.InferenceServerClient(server.http_url.removeprefix("http://"), network_timeout=60)


@pytest.fixture(scope="module")
def grpc_client(server: ServerProcess) -> triton_grpc.InferenceServerClient:
    return triton_grpc.InferenceServerClient(server.address)


def post(server: ServerProcess, path: str, body: object) -> tuple[int, dict]:
    """What `curl -d JSON` gets: the status and the JSON answer."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"{server.http_url}{path}", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("example") and client.is_model_ready("pair", "2")
    assert not client.is_model_ready("nope")
    metadata = client.get_server_metadata()
    assert metadata["name"] == "quiver" and set(metadata["extensions"]) == {"model_configuration", "statistics", "system_shared_memory", "schedule_policy", "binary_tensor_data", "model_repository"}
    assert client.get_model_metadata("pair") == {
        "name": "pair",
        "versions": ["1", "2"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}, {"name": "k", "datatype": "INT64", "shape": [-1, 2]}],
        "outputs": [
            {"name": "total", "datatype": "FP32", "shape": [-1, 1]},
            {"name": "looked_up", "datatype": "INT64", "shape": [-1, 2]},
        ],
    }
    assert client.get_model_metadata("pair", "1")["name"] == "pair"


def test_model_config_is_the_one_grpc_serves(client: triton.InferenceServerClient, grpc_client: triton_grpc.InferenceServerClient) -> None:
    config = client.get_model_config("tuned")
    over_grpc = grpc_client.get_model_config("tuned").config
    assert config["max_batch_size"] == over_grpc.max_batch_size > 0
    assert config["input"] == [{"name": t.name, "data_type": "TYPE_FP32", "dims": list(t.dims)} for t in over_grpc.input]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == over_grpc.dynamic_batching.max_queue_delay_microseconds
    assert [(g["kind"], g["count"]) for g in config["instance_group"]] == [("KIND_CPU", over_grpc.instance_group[0].count)]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("rows", [1, 17])
def test_example_matches_onnxruntime(client: triton.InferenceServerClient, store: Path, binary: bool, rows: int) -> None:
    x = np.random.default_rng(rows).standard_normal((rows, 64)).astype(np.float32)
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    result = client.infer("example", [tensor], outputs=[triton.InferRequestedOutput("output", binary_data=binary)])
    expected = reference(store / "example/1/model.onnx", {"input": x})["output"]
    np.testing.assert_allclose(result.as_numpy("output"), expected, rtol=0, atol=1e-5)
    response = result.get_response()
    assert ("parameters" in response["outputs"][0]) == binary  # binary_data_size, else data
    assert response["parameters"]["quiver.variant"] == "fp32" and response["parameters"]["quiver.pool"] == "cpu"


def test_two_outputs_mixed_json_and_binary(client: triton.InferenceServerClient, store: Path) -> None:
    feeds = {"x": np.arange(15, dtype=np.float32).reshape(5, 3), "k": np.arange(10, dtype=np.int64).reshape(5, 2) % len(PAIR_TABLE)}
    tensors = [triton.InferInput("x", [5, 3], "FP32"), triton.InferInput("k", [5, 2], "INT64")]
    tensors[0].set_data_from_numpy(feeds["x"], binary_data=False)
    tensors[1].set_data_from_numpy(feeds["k"], binary_data=True)
    outputs = [triton.InferRequestedOutput("looked_up", binary_data=True), triton.InferRequestedOutput("total", binary_data=False)]
    result = client.infer("pair", tensors, model_version="2", outputs=outputs, request_id="r-7")
    expected = reference(store / "pair/2/model.onnx", feeds)
    response = result.get_response()
    assert [(o["name"], o["datatype"], o["shape"]) for o in response["outputs"]] == [
        ("looked_up", "INT64", [5, 2]),
        ("total", "FP32", [5, 1]),
    ]
    assert response["id"] == "r-7" and response["model_version"] == "2"
    np.testing.assert_array_equal(result.as_numpy("looked_up"), expected["looked_up"])
    np.testing.assert_allclose(result.as_numpy("total"), expected["total"], rtol=0, atol=1e-5)


def test_routing_hints_ride_in_parameters(client: triton.InferenceServerClient) -> None:
    tensor = triton.InferInput("input", [2, 64], "FP32")
    tensor.set_data_from_numpy(np.ones((2, 64), np.float32))
    result = client.infer("tuned", [tensor], parameters={"quiver.variant": "int8-static"})
    assert result.get_response()["parameters"]["quiver.variant"] == "int8-static"
    assert result.get_response()["parameters"]["quiver.reason"] == "pinned"


def test_tritons_timeout_parameter_is_the_deadline(client: triton.InferenceServerClient) -> None:
    tensor = triton.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 64), np.float32))
    with pytest.raises(triton.InferenceServerException) as error:
        client.infer("example", [tensor], timeout=1)  # one microsecond: gone before dispatch
    assert error.value.status() == "504" and "deadline" in error.value.message()
    assert client.infer("example", [tensor], timeout=30_000_000).as_numpy("output").shape == (1, 10)


def test_curl_json_with_nested_data(server: ServerProcess, store: Path) -> None:
    x = np.arange(2 * 64, dtype=np.float32).reshape(2, 64) / 100
    status, answer = post(server, "/v2/models/example/infer", {
        "id": "curl-1",
        "inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": x.tolist()}],
    })
    assert status == 200, answer
    [output] = answer["outputs"]
    assert (output["name"], output["datatype"], output["shape"], answer["id"]) == ("output", "FP32", [2, 10], "curl-1")
    expected = reference(store / "example/1/model.onnx", {"input": x})["output"]
    np.testing.assert_allclose(np.array(output["data"], np.float32).reshape(2, 10), expected, rtol=0, atol=1e-5)


def example_json(shape: list[int], data: list | None = None, **extra: object) -> dict:
    count = int(np.prod(shape)) if all(d >= 0 for d in shape) else 0
    return {"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": [0.5] * count if data is None else data}], **extra}


# Each case: what to send, the status REST answers, and the gRPC status the same request gets.
BAD = {
    "unknown model": ("nope", example_json([1, 64]), 404, "StatusCode.NOT_FOUND"),
    "unknown version": ("example/versions/9", example_json([1, 64]), 404, "StatusCode.NOT_FOUND"),
    "wrong shape": ("example", example_json([1, 63]), 400, "StatusCode.INVALID_ARGUMENT"),
    "wrong datatype": ("example", {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "INT64", "data": [1] * 64}]}, 400,
                       "StatusCode.INVALID_ARGUMENT"),
    "unknown output": ("example", example_json([1, 64], outputs=[{"name": "logits"}]), 400, "StatusCode.INVALID_ARGUMENT"),
    "bad hint": ("example", example_json([1, 64], parameters={"quiver.precision": "fp8"}), 400, "StatusCode.INVALID_ARGUMENT"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_request_same_status_class_and_message_as_grpc(
    server: ServerProcess, grpc_client: triton_grpc.InferenceServerClient, case: str
) -> None:
    path, body, status, grpc_status = BAD[case]
    got, answer = post(server, f"/v2/models/{path}/infer", body)
    assert got == status and set(answer) == {"error"}, answer

    model, _, version = path.partition("/versions/")
    tensor = body["inputs"][0]
    request = triton_grpc.InferInput(tensor["name"], tensor["shape"], tensor["datatype"])
    request.set_data_from_numpy(np.array(tensor["data"], np.float32 if tensor["datatype"] == "FP32" else np.int64).reshape(tensor["shape"]))
    outputs = [triton_grpc.InferRequestedOutput(o["name"]) for o in body.get("outputs", [])] or None
    with pytest.raises(triton_grpc.InferenceServerException) as error:
        grpc_client.infer(model, [request], model_version=version, outputs=outputs, parameters=body.get("parameters"))
    assert error.value.status() == grpc_status and error.value.message() == answer["error"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32"}]}).encode(), "neither data nor"),
        (json.dumps(example_json([1, 64], data=["a"] * 64)).encode(), "does not fit FP32"),
        (json.dumps(example_json([1, 64], data=[0.5] * 3)).encode(), "data holds 3 values, shape [1, 64] needs 64"),
    ],
    ids=["malformed", "not an object", "no data", "not numbers", "value count"],
)
def test_malformed_bodies_are_400_and_the_next_request_succeeds(server: ServerProcess, body: bytes, message: str) -> None:
    status, answer = post(server, "/v2/models/example/infer", body)
    assert status == 400 and message in answer["error"], answer
    status, answer = post(server, "/v2/models/example/infer", example_json([1, 64]))
    assert status == 200, answer


def test_binary_sizes_that_do_not_add_up_are_400(server: ServerProcess) -> None:
    header = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "parameters": {"binary_data_size": 256}}]})
    for extra, length in ((b"\0" * 255, len(header)), (b"\0" * 260, len(header)), (b"\0" * 256, len(header) + 999)):
        request = urllib.request.Request(
            f"{server.http_url}/v2/models/example/infer", data=header.encode() + extra,
            headers={"Inference-Header-Content-Length": str(length), "Content-Type": "application/octet-stream"},
        )
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(request, timeout=60)
        assert error.value.code == 400 and "error" in json.loads(error.value.read())


def test_a_body_over_the_limit_is_413_before_it_is_read(server: ServerProcess) -> None:
    status, answer = post(server, "/v2/models/example/infer", b" " * ((MAX_REQUEST_MB + 2) << 20))
    assert status == 413 and "exceeded" in answer["error"], answer


def test_unknown_paths_answer_json_errors(server: ServerProcess) -> None:
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(f"{server.http_url}/v2/nothing-here", timeout=30)
    assert error.value.code == 404 and set(json.loads(error.value.read())) == {"error"}


def test_statistics_and_metrics_say_which_door(client: triton.InferenceServerClient, server: ServerProcess) -> None:
    tensor = triton.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 64), np.float32))
    client.infer("example", [tensor])
    with pytest.raises(triton.InferenceServerException) as error:
        client.infer("nope", [tensor])
    assert error.value.status() == "404"
    [stats] = client.get_inference_statistics("example", "1")["model_stats"]
    assert (stats["name"], stats["version"]) == ("example", "1") and stats["inference_count"] >= 1
    assert stats["inference_stats"]["success"]["count"] >= 1
    assert {(s["name"], s["version"]) for s in client.get_inference_statistics()["model_stats"]} >= {("example", "1"), ("pair", "2")}
    with pytest.raises(triton.InferenceServerException) as error:
        client.get_model_config("nope")
    assert error.value.status() == "404"

    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    requests = {
        (sample.name, sample.labels["model"], sample.labels["code"], sample.labels["protocol"])
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in ("quiver_requests_total", "quiver_rejected_requests_total")
    }
    assert ("quiver_requests_total", "example", "OK", "http") in requests
    assert ("quiver_rejected_requests_total", "nope", "NOT_FOUND", "http") in requests
