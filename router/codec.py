"""Open Inference Protocol gRPC messages ↔ the protocol operations' typed values (router/operations.py).

Decoding only reads where each input travelled (`raw_input_contents`, the typed contents
field of its datatype, or a shared memory region its parameters name); router/tensors.py checks
it against the model. Encoding always answers
with `raw_output_contents` in the order of `outputs`, the one form tritonclient decodes.
"""

from __future__ import annotations

from collections.abc import Mapping

from quiver._proto import grpc_predict_v2_pb2 as pb
from quiver.serving import Datatype, TensorSpec

from . import shared_memory
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
    # Inputs in shared memory have no raw_input_contents entry: the others have one each, in order.
    regions = [shared_memory.reference(_parameters(tensor.parameters), f"input {tensor.name!r}") for tensor in request.inputs]
    raw = iter(request.raw_input_contents)
    if request.raw_input_contents and len(request.raw_input_contents) != regions.count(None):
        where = " not in shared memory" if regions.count(None) < len(regions) else ""
        raise InvalidArgument(f"{regions.count(None)} inputs{where} but {len(request.raw_input_contents)} raw_input_contents entries")
    tensors = []
    for tensor, region in zip(request.inputs, regions):
        if region is not None:
            tensors.append(WireTensor(tensor.name, tensor.datatype, tensor.shape, region=region))
            continue
        if request.raw_input_contents:
            tensors.append(WireTensor(tensor.name, tensor.datatype, tensor.shape, raw=next(raw)))
            continue
        field = _CONTENTS_FIELD.get(tensor.datatype)
        values = None if field is None else getattr(tensor.contents, field)
        tensors.append(WireTensor(tensor.name, tensor.datatype, tensor.shape, values=values, field=f"contents.{field}"))
    return InferRequest(
        model=request.model_name,
        version=request.model_version,
        id=request.id,
        parameters=_parameters(request.parameters),
        inputs=tensors,
        outputs=[output.name for output in request.outputs],
        time_remaining_s=time_remaining_s,
        output_regions={
            output.name: region
            for output in request.outputs
            if (region := shared_memory.reference(_parameters(output.parameters), f"output {output.name!r}")) is not None
        },
    )


def infer_response(answer: InferAnswer) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=answer.model, model_version=answer.version, id=answer.id)
    for name, array in answer.outputs:
        datatype, data = output_bytes(array)
        output = response.outputs.add(name=name, datatype=datatype.value, shape=array.shape)
        region = answer.in_regions.get(name)
        # An output in shared memory keeps its (empty) raw entry, as Triton's do, so the entries stay in order.
        response.raw_output_contents.append(data if region is None else b"")
        if region is not None:
            for key, value in shared_memory.parameters(region).items():
                set_parameter(output.parameters[key], value)
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


def _parameters(parameters: Mapping[str, pb.InferParameter]) -> dict[str, object]:
    if not parameters:  # most tensors carry none: no iterator over an empty map per tensor
        return {}
    return {key: parameter_value(value) for key, value in parameters.items()}


def parameter_value(parameter: pb.InferParameter) -> Parameter | float | None:
    choice = parameter.WhichOneof("parameter_choice")
    return None if choice is None else getattr(parameter, choice)


def tensor_metadata(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(name=spec.name, datatype=spec.datatype.value, shape=spec.shape)
