"""Open Inference Protocol gRPC messages ↔ the protocol operations' typed values (router/operations.py).

Decoding only reads where each input travelled (`raw_input_contents`, or the typed contents
field of its datatype); router/tensors.py checks it against the model. Encoding always answers
with `raw_output_contents` in the order of `outputs`, the one form tritonclient decodes.
"""

from __future__ import annotations

from quiver._proto import grpc_predict_v2_pb2 as pb
from quiver.serving import Datatype, TensorSpec

from .operations import InferAnswer, InferRequest, Parameter
from .errors import InvalidArgument
from .tensors import WireTensor, output_bytes

# Where typed (non-raw) contents of each datatype travel; FP16 has no typed field: raw only.
_CONTENTS_FIELD: dict[str, str] = {
    Datatype.BOOL.value: "bool_contents",
    Datatype.INT8.value: "int_contents",
    Datatype.INT16.value: "int_contents",
    Datatype.INT32.value: "int_contents",
    Datatype.INT64.value: "int64_contents",
    Datatype.UINT8.value: "uint_contents",
    Datatype.UINT16.value: "uint_contents",
    Datatype.UINT32.value: "uint_contents",
    Datatype.UINT64.value: "uint64_contents",
    Datatype.FP32.value: "fp32_contents",
    Datatype.FP64.value: "fp64_contents",
}


def infer_request(request: pb.ModelInferRequest, time_remaining_s: float | None) -> InferRequest:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(f"{len(request.inputs)} inputs but {len(raw)} raw_input_contents entries")
    tensors = []
    for index, tensor in enumerate(request.inputs):
        if raw:
            tensors.append(WireTensor(tensor.name, tensor.datatype, tensor.shape, raw=raw[index]))
            continue
        field = _CONTENTS_FIELD.get(tensor.datatype)
        values = None if field is None else getattr(tensor.contents, field)
        tensors.append(WireTensor(tensor.name, tensor.datatype, tensor.shape, values=values, field=f"contents.{field}"))
    return InferRequest(
        model=request.model_name,
        version=request.model_version,
        id=request.id,
        parameters={key: parameter_value(value) for key, value in request.parameters.items()},
        inputs=tensors,
        outputs=[output.name for output in request.outputs],
        time_remaining_s=time_remaining_s,
    )


def infer_response(answer: InferAnswer) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=answer.model, model_version=answer.version, id=answer.id)
    for name, array in answer.outputs:
        datatype, data = output_bytes(array)
        response.outputs.add(name=name, datatype=datatype.value, shape=array.shape)
        response.raw_output_contents.append(data)
    for key, value in answer.parameters.items():
        set_parameter(response.parameters[key], value)
    return response


def set_parameter(parameter: pb.InferParameter, value: Parameter) -> None:
    # bool first: it is also an int.
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        parameter.int64_param = value
    else:
        parameter.string_param = value


def parameter_value(parameter: pb.InferParameter) -> Parameter | float | None:
    choice = parameter.WhichOneof("parameter_choice")
    return None if choice is None else getattr(parameter, choice)


def tensor_metadata(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(name=spec.name, datatype=spec.datatype.value, shape=spec.shape)
