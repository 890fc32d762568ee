"""Every malformed request gets the right status and a message naming the problem, and a
good request sent right after still succeeds. Requests are built from tritonclient's own
protobuf messages so that anything a client could put on the wire can be sent."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from .conftest import MAX_REQUEST_MB
from .serverproc import ServerProcess

Request = pb.ModelInferRequest
Tensor = Request.InferInputTensor


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    # A client limit above the server's, so the server is the one that refuses big messages.
    options = [("grpc.max_send_message_length", 64 << 20)]
    with grpc.insecure_channel(server.address, options=options) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def example(rows: int = 2, **changes: object) -> Request:
    """A valid request for `example`; `changes` override fields of its one input tensor."""
    x = np.ones((rows, 64), np.float32)
    tensor = Tensor(name="input", datatype="FP32", shape=x.shape)
    for field, value in changes.items():
        if field == "shape":
            del tensor.shape[:]
            tensor.shape.extend(value)
        else:
            setattr(tensor, field, value)
    return Request(model_name="example", inputs=[tensor], raw_input_contents=[x.tobytes()])


def pair(x_rows: int = 1, k_rows: int = 1) -> Request:
    return Request(
        model_name="pair",
        inputs=[Tensor(name="x", datatype="FP32", shape=[x_rows, 3]), Tensor(name="k", datatype="INT64", shape=[k_rows, 2])],
        raw_input_contents=[np.zeros((x_rows, 3), np.float32).tobytes(), np.zeros((k_rows, 2), np.int64).tobytes()],
    )


def with_(request: Request, change: Callable[[Request], object]) -> Request:
    change(request)
    return request


NOT_FOUND, INVALID = grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT
CASES = {
    "unknown model": (with_(example(), lambda r: setattr(r, "model_name", "nope")), NOT_FOUND, "unknown model 'nope'"),
    "unknown version": (with_(example(), lambda r: setattr(r, "model_version", "9")), NOT_FOUND, "no version '9'"),
    "unknown variant": (
        with_(example(), lambda r: r.parameters["quiver.variant"].CopyFrom(pb.InferParameter(string_param="int4"))),
        NOT_FOUND,
        "no variant 'int4'",
    ),
    "variant hint not a string": (
        with_(example(), lambda r: r.parameters["quiver.variant"].CopyFrom(pb.InferParameter(int64_param=3))),
        INVALID,
        "'quiver.variant' must be a non-empty string",
    ),
    "wrong input name": (example(name="inputs"), INVALID, "unknown input 'inputs'"),
    "missing input": (with_(pair(), lambda r: (r.inputs.pop(), r.raw_input_contents.pop())), INVALID, "missing input(s) ['k']"),
    "input given twice": (
        with_(example(), lambda r: (r.inputs.append(r.inputs[0]), r.raw_input_contents.append(r.raw_input_contents[0]))),
        INVALID,
        "given twice",
    ),
    "wrong datatype": (example(datatype="FP64"), INVALID, "datatype 'FP64', model expects FP32"),
    "wrong rank": (example(shape=[128]), INVALID, "shape [128] does not match the model's [-1, 64]"),
    "wrong fixed dimension": (example(shape=[2, 63]), INVALID, "shape [2, 63] does not match"),
    "negative dimension": (example(shape=[-2, 64]), INVALID, "does not match"),
    "zero-size batch": (
        with_(example(shape=[0, 64]), lambda r: r.raw_input_contents.__setitem__(0, b"")),
        INVALID,
        "holds no elements",
    ),
    "raw length": (example(shape=[3, 64]), INVALID, "raw contents hold 512 bytes, shape [3, 64] of FP32 needs 768"),
    "raw entries count": (
        with_(example(), lambda r: r.raw_input_contents.append(b"")),
        INVALID,
        "1 inputs but 2 raw_input_contents entries",
    ),
    "typed contents count": (
        with_(example(rows=1), lambda r: (r.ClearField("raw_input_contents"), r.inputs[0].contents.fp32_contents.extend([1.0] * 3))),
        INVALID,
        "contents.fp32_contents holds 3 values, shape [1, 64] needs 64",
    ),
    "batch sizes disagree": (pair(x_rows=2, k_rows=3), INVALID, "disagree on the batch size"),
    "unknown output": (
        with_(example(), lambda r: r.outputs.add(name="logits")),
        INVALID,
        "unknown output 'logits'",
    ),
    "declared shape over the size limit": (
        example(shape=[1 << 40, 64]),
        INVALID,
        f"over the limit of {MAX_REQUEST_MB << 20}",
    ),
    "tensors over the size limit": (example(rows=(MAX_REQUEST_MB << 20) // 256 + 1), INVALID, "over the limit"),
    "message over the size limit": (example(rows=(MAX_REQUEST_MB << 20) // 64), grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
    "value the model rejects": (
        with_(pair(), lambda r: r.raw_input_contents.__setitem__(1, np.array([[0, 99]], np.int64).tobytes())),
        INVALID,
        "model 'pair' rejected the input",
    ),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_request_gets_its_status_and_the_next_one_succeeds(stub: pb_grpc.GRPCInferenceServiceStub, case: str) -> None:
    request, code, message = CASES[case]
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(request, timeout=30)
    assert error.value.code() == code, error.value.details()
    assert message in error.value.details()

    response = stub.ModelInfer(example(), timeout=30)
    assert np.frombuffer(response.raw_output_contents[0], np.float32).shape == (20,)


def test_typed_contents_give_the_same_answer_as_raw(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    x = np.random.default_rng(3).standard_normal((2, 64)).astype(np.float32)
    raw = example()
    raw.raw_input_contents[0] = x.tobytes()
    typed = example()
    typed.ClearField("raw_input_contents")
    typed.inputs[0].contents.fp32_contents.extend(x.ravel().tolist())
    assert stub.ModelInfer(typed, timeout=30).raw_output_contents == stub.ModelInfer(raw, timeout=30).raw_output_contents
