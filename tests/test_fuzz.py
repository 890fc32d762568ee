"""A property-based fuzzer over ModelInferRequest against the live router: whatever the
request, an answer comes back in time, with a status from the expected set, and the server
keeps serving good requests."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from .serverproc import ServerProcess

EXPECTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
DATATYPES = ["FP32", "FP64", "FP16", "INT64", "INT32", "INT8", "UINT8", "BOOL", "BYTES", "", "fp32", "ÜNICODE"]
NAMES = ["input", "x", "k", "", "inpüt", "input\x00", "😀"]
MODELS = ["example", "pair", "tuned", "", "nope", "ëxample"]
PARAMETER_KEYS = ["quiver.variant", "quiver.precision", "quiver.pool", "quiver.latency_budget_ms", "quiver.min_accuracy", "other"]


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


dims = st.lists(st.one_of(st.integers(-3, 70), st.sampled_from([1 << 31, 1 << 62, -(1 << 62)])), max_size=4)
floats = st.floats(allow_nan=True, allow_infinity=True, width=32)


@st.composite
def tensors(draw: st.DrawFn) -> tuple[pb.ModelInferRequest.InferInputTensor, bytes | None]:
    tensor = pb.ModelInferRequest.InferInputTensor(
        name=draw(st.sampled_from(NAMES)), datatype=draw(st.sampled_from(DATATYPES)), shape=draw(dims)
    )
    kind = draw(st.sampled_from(["raw-matching", "raw-random", "typed-floats", "typed-ints", "typed-bytes", "none"]))
    raw = None
    if kind == "raw-matching" and all(0 <= d <= 70 for d in tensor.shape):
        count = int(np.prod(tensor.shape)) if tensor.shape else 1
        fill = draw(st.lists(floats, min_size=1, max_size=8))  # NaN and ±Inf included: passed through
        raw = np.resize(np.asarray(fill, np.float32), count).tobytes()
    elif kind == "raw-random":
        raw = draw(st.binary(max_size=600))
    elif kind == "typed-floats":
        tensor.contents.fp32_contents.extend(draw(st.lists(floats, max_size=200)))
    elif kind == "typed-ints":
        tensor.contents.int64_contents.extend(draw(st.lists(st.integers(-(1 << 63), (1 << 63) - 1), max_size=50)))
    elif kind == "typed-bytes":
        tensor.contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=20), max_size=5)))
    return tensor, raw


@st.composite
def requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(
        model_name=draw(st.sampled_from(MODELS)),
        model_version=draw(st.sampled_from(["", "1", "2", "9", "-1", "ü"])),
        id=draw(st.text(max_size=10)),
    )
    drawn = draw(st.lists(tensors(), max_size=3))
    for tensor, _ in drawn:
        request.inputs.append(tensor)
    raws = [raw for _, raw in drawn]
    if raws and draw(st.booleans()):
        request.raw_input_contents.extend(raw if raw is not None else b"" for raw in raws)
    for name in draw(st.lists(st.sampled_from(["output", "total", "looked_up", "", "nope"]), max_size=3)):
        request.outputs.add(name=name)
    for key in draw(st.lists(st.sampled_from(PARAMETER_KEYS), max_size=3, unique=True)):
        value = draw(st.one_of(st.text(max_size=8), st.integers(-5, 1 << 40), st.booleans(), st.floats(allow_nan=True)))
        parameter = request.parameters[key]
        if isinstance(value, bool):
            parameter.bool_param = value
        elif isinstance(value, int):
            parameter.int64_param = value
        elif isinstance(value, float):
            parameter.double_param = value
        else:
            parameter.string_param = value
    return request


@settings(max_examples=5000, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(request=requests())
def test_any_request_gets_an_expected_status_in_time(stub: pb_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest) -> None:
    try:
        # "In time" means not hung: a request left without an answer fails DEADLINE_EXCEEDED here.
        # Generous, as a stalled machine may be; the model answers in milliseconds.
        stub.ModelInfer(request, timeout=30)
        code = grpc.StatusCode.OK
    except grpc.RpcError as error:
        code = error.code()
        assert error.details(), f"{code} without a message"
    assert code in EXPECTED, f"{code} for {request}"


def test_the_router_still_serves_after_the_fuzzing(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    request = pb.ModelInferRequest(
        model_name="example",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 64])],
        raw_input_contents=[np.ones((1, 64), np.float32).tobytes()],
    )
    assert len(stub.ModelInfer(request, timeout=30).raw_output_contents[0]) == 40
