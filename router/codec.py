"""Open Inference Protocol tensors ↔ numpy, with the validation that guards the replicas.

Decoding checks every input against the model's signature (name, count, datatype, shape,
byte length, size limit) before anything is allocated; encoding always answers with
`raw_output_contents` in the order of `outputs`, the one form tritonclient decodes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from quiver._proto import grpc_predict_v2_pb2 as pb
from quiver.serving import Datatype, Manifest, TensorSpec

from .errors import InvalidArgument

Parameter = str | int | bool

# Where typed (non-raw) contents of each datatype travel; FP16 has no typed field: raw only.
_CONTENTS_FIELD: dict[Datatype, str] = {
    Datatype.BOOL: "bool_contents",
    Datatype.INT8: "int_contents",
    Datatype.INT16: "int_contents",
    Datatype.INT32: "int_contents",
    Datatype.INT64: "int64_contents",
    Datatype.UINT8: "uint_contents",
    Datatype.UINT16: "uint_contents",
    Datatype.UINT32: "uint_contents",
    Datatype.UINT64: "uint64_contents",
    Datatype.FP32: "fp32_contents",
    Datatype.FP64: "fp64_contents",
}


def decode_inputs(request: pb.ModelInferRequest, manifest: Manifest, max_bytes: int) -> dict[str, np.ndarray]:
    """The request's inputs as arrays, each checked against the model's input of that name."""
    specs = {spec.name: spec for spec in manifest.inputs}
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(f"{len(request.inputs)} inputs but {len(raw)} raw_input_contents entries")
    total = 0
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        spec = specs.get(tensor.name)
        if spec is None:
            raise InvalidArgument(f"unknown input {tensor.name!r}; model {manifest.name!r} takes {list(specs)}")
        if tensor.name in arrays:
            raise InvalidArgument(f"input {tensor.name!r} given twice")
        if tensor.datatype != spec.datatype.value:
            raise InvalidArgument(f"input {tensor.name!r}: datatype {tensor.datatype!r}, model expects {spec.datatype.value}")
        shape = _checked_shape(tensor.name, list(tensor.shape), spec)
        count = math.prod(shape)
        total += count * spec.datatype.itemsize
        if total > max_bytes:
            raise InvalidArgument(f"request tensors need {total} bytes, over the limit of {max_bytes}")
        if raw:
            arrays[tensor.name] = _from_raw(tensor.name, raw[index], spec.datatype, shape)
        else:
            arrays[tensor.name] = _from_contents(tensor, spec.datatype, shape, count)
    missing = [name for name in specs if name not in arrays]
    if missing:
        raise InvalidArgument(f"missing input(s) {missing}; model {manifest.name!r} takes {list(specs)}")
    if manifest.batchable and len({array.shape[0] for array in arrays.values()}) > 1:
        sizes = {name: array.shape[0] for name, array in arrays.items()}
        raise InvalidArgument(f"inputs disagree on the batch size (first dimension): {sizes}")
    return arrays


def requested_outputs(request: pb.ModelInferRequest, manifest: Manifest) -> list[str]:
    """The output names to answer with, in order: the request's selection or all of them."""
    known = [spec.name for spec in manifest.outputs]
    if not request.outputs:
        return known
    names = [output.name for output in request.outputs]
    for name in names:
        if name not in known:
            raise InvalidArgument(f"unknown output {name!r}; model {manifest.name!r} has {known}")
    if len(set(names)) != len(names):
        raise InvalidArgument(f"outputs requested more than once: {names}")
    return names


def encode_response(
    request: pb.ModelInferRequest,
    manifest: Manifest,
    outputs: Mapping[str, np.ndarray],
    names: list[str],
    parameters: Mapping[str, Parameter],
) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=manifest.name, model_version=manifest.version, id=request.id)
    for name in names:
        array = outputs[name]
        datatype = Datatype.from_numpy(array.dtype)
        response.outputs.add(name=name, datatype=datatype.value, shape=array.shape)
        response.raw_output_contents.append(np.ascontiguousarray(array, datatype.numpy).tobytes())
    for key, value in parameters.items():
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


def _checked_shape(name: str, shape: list[int], spec: TensorSpec) -> list[int]:
    if len(shape) != len(spec.shape) or any(
        got < 0 or (want != -1 and got != want) for got, want in zip(shape, spec.shape)
    ):
        raise InvalidArgument(f"input {name!r}: shape {shape} does not match the model's {spec.shape}")
    if 0 in shape:
        raise InvalidArgument(f"input {name!r}: shape {shape} holds no elements")
    return shape


def _from_raw(name: str, data: bytes, datatype: Datatype, shape: list[int]) -> np.ndarray:
    expected = math.prod(shape) * datatype.itemsize
    if len(data) != expected:
        raise InvalidArgument(
            f"input {name!r}: raw contents hold {len(data)} bytes, shape {shape} of {datatype.value} needs {expected}"
        )
    return np.frombuffer(data, dtype=datatype.numpy).reshape(shape)


def _from_contents(tensor: pb.ModelInferRequest.InferInputTensor, datatype: Datatype, shape: list[int], count: int) -> np.ndarray:
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidArgument(f"input {tensor.name!r}: {datatype.value} travels only in raw_input_contents")
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise InvalidArgument(
            f"input {tensor.name!r}: contents.{field} holds {len(values)} values, shape {shape} needs {count}"
        )
    try:
        return np.array(values, dtype=datatype.numpy).reshape(shape)
    except OverflowError as exc:
        raise InvalidArgument(f"input {tensor.name!r}: a value does not fit {datatype.value}") from exc
