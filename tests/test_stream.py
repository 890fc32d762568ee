"""ModelStreamInfer through tritonclient (sync `start_stream`/`async_stream_infer` and grpc.aio's
`stream_infer`), and Triton's schedule-policy parameters `priority` and `timeout` on either door.

One stream carries good and bad requests mixed: every request is answered, in order, the bad ones
with their error and the good ones with what ONNX Runtime computes directly.
"""

from __future__ import annotations

import asyncio
import json
import queue
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio

from quiver.router.errors import InvalidArgument
from quiver.router.hints import RoutingHints

from .models import reference
from .serverproc import ServerProcess

ROWS = 2


def features(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((ROWS, 64)).astype(np.float32)


def example_input(array: np.ndarray, datatype: str = "FP32") -> list[triton.InferInput]:
    tensor = triton.InferInput("input", list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return [tensor]


def requests() -> list[tuple[str, dict, str | None]]:
    """(request id, async_stream_infer's arguments, the error expected or None), in the order sent."""
    wrong_shape = np.ones((ROWS, 7), np.float32)
    cases = []
    for index in range(12):
        kwargs: dict = {"model_name": "example", "inputs": example_input(features(index))}
        expected = None
        if index % 4 == 1:
            kwargs["model_name"] = "nope"
            expected = "unknown model 'nope'"
        elif index % 4 == 3:
            kwargs["inputs"] = example_input(wrong_shape)
            expected = "shape [2, 7] does not match the model's [-1, 64]"
        cases.append((f"r{index}", kwargs, expected))
    return cases


def check(results: list[tuple[object, object]], store: Path) -> None:
    model = store / "example" / "1" / "model.onnx"
    sent = requests()
    assert len(results) == len(sent)
    for index, ((request_id, _, expected), (result, error)) in enumerate(zip(sent, results)):
        if expected is None:
            assert error is None, (request_id, error)
            assert result.get_response().id == request_id  # in order
            want = reference(model, {"input": features(index)})["output"]
            np.testing.assert_allclose(result.as_numpy("output"), want, rtol=1e-5, atol=1e-6)
        else:
            assert result is None and expected in error.message(), (request_id, error)


def test_a_stream_answers_every_request_in_order_with_errors_in_place(server: ServerProcess, store: Path) -> None:
    answers: queue.Queue = queue.Queue()
    client = triton.InferenceServerClient(server.address)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for request_id, kwargs, _ in requests():
            client.async_stream_infer(request_id=request_id, **kwargs)
        results = [answers.get(timeout=60) for _ in requests()]
    finally:
        client.stop_stream()
        client.close()
    check(results, store)


def test_the_asyncio_client_streams_too(server: ServerProcess, store: Path) -> None:
    async def run() -> list[tuple[object, object]]:
        async with triton_aio.InferenceServerClient(server.address) as client:

            async def sent():
                for request_id, kwargs, _ in requests():
                    yield {"request_id": request_id, **kwargs}

            return [answer async for answer in client.stream_infer(sent())]

    check(asyncio.run(asyncio.wait_for(run(), 120)), store)


def test_tritons_timeout_is_the_deadline_on_grpc_too(server: ServerProcess) -> None:
    client = triton.InferenceServerClient(server.address)
    with pytest.raises(triton.InferenceServerException) as error:
        client.infer("example", example_input(features(0)), timeout=1)  # one microsecond: gone before dispatch
    assert error.value.status() == "StatusCode.DEADLINE_EXCEEDED", error.value
    answer = client.infer("example", example_input(features(0)), timeout=30_000_000, priority=1)
    assert answer.as_numpy("output").shape == (ROWS, 10)


def test_a_bad_priority_is_refused(server: ServerProcess) -> None:
    # tritonclient sends only integers ≥ 0 as priority (and refuses the name in `parameters`); curl may send anything.
    body = {"parameters": {"priority": -3}, "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}]}
    request = urllib.request.Request(f"{server.http_url}/v2/models/example/infer", data=json.dumps(body).encode())
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=60)
    assert error.value.code == 400
    assert "parameter 'priority' must be Triton's priority level" in json.loads(error.value.read())["error"]


@pytest.mark.parametrize(
    ("parameters", "level"),
    [({}, 0), ({"priority": 0}, 0), ({"priority": 1}, 1), ({"priority": 2}, 0), ({"priority": 3}, -1), ({"priority": 9}, -1),
     ({"priority": 1, "quiver.priority": -1}, -1)],
)  # fmt: skip
def test_tritons_priority_levels_map_onto_quivers_three(parameters: dict, level: int) -> None:
    assert RoutingHints.from_parameters(parameters).priority == level


def test_a_priority_that_is_not_a_level_is_refused() -> None:
    for value in (-1, "high", True, 1.5):
        with pytest.raises(InvalidArgument, match="'priority' must be Triton's priority level"):
            RoutingHints.from_parameters({"priority": value})
