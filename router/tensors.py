"""Request tensors as either transport received them, checked against the model's signature.

The gRPC codec (router/codec.py) and the REST codec (router/rest_codec.py) turn their wire
forms into `WireTensor`s; `decode_inputs` checks every one (name, count, datatype, shape, byte
length, size limit) before anything is allocated, so a bad request fails the same way, with the
same message, through either door.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from quiver.serving import Datatype, Manifest, TensorSpec

from .errors import InvalidArgument


@dataclass(frozen=True)
class RegionRef:
    """Where a tensor's bytes lie in system shared memory (router/shared_memory.py): `byte_size`
    bytes at `offset` into the region registered as `region`."""

    region: str
    byte_size: int
    offset: int = 0


@dataclass(frozen=True)
class WireTensor:
    """One input as it arrived: raw little-endian bytes, or a flat sequence of values (`field` says
    where they travelled, for messages); neither when the transport has no form for the datatype.
    An input in shared memory names its `region`; its bytes are read from there into `raw`."""

    name: str
    datatype: str
    shape: Sequence[int]
    raw: bytes | memoryview | None = None
    values: Sequence[object] | None = None
    field: str = "data"
    region: RegionRef | None = None


def decode_inputs(tensors: Sequence[WireTensor], manifest: Manifest, max_bytes: int) -> dict[str, np.ndarray]:
    """The request's inputs as arrays, each checked against the model's input of that name."""
    specs = {spec.name: spec for spec in manifest.inputs}
    total = 0
    arrays: dict[str, np.ndarray] = {}
    for tensor in tensors:
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
        if tensor.raw is not None:
            arrays[tensor.name] = _from_raw(tensor, spec.datatype, shape)
        else:
            arrays[tensor.name] = _from_values(tensor, spec.datatype, shape, count)
    missing = [name for name in specs if name not in arrays]
    if missing:
        raise InvalidArgument(f"missing input(s) {missing}; model {manifest.name!r} takes {list(specs)}")
    if manifest.batchable and len({array.shape[0] for array in arrays.values()}) > 1:
        sizes = {name: array.shape[0] for name, array in arrays.items()}
        raise InvalidArgument(f"inputs disagree on the batch size (first dimension): {sizes}")
    return arrays


def requested_outputs(names: Sequence[str], manifest: Manifest) -> list[str]:
    """The output names to answer with, in order: the request's selection or all of them."""
    known = [spec.name for spec in manifest.outputs]
    if not names:
        return known
    for name in names:
        if name not in known:
            raise InvalidArgument(f"unknown output {name!r}; model {manifest.name!r} has {known}")
    if len(set(names)) != len(names):
        raise InvalidArgument(f"outputs requested more than once: {list(names)}")
    return list(names)


def output_bytes(array: np.ndarray) -> tuple[Datatype, bytes]:
    """An output's datatype and its little-endian bytes, the form both transports send."""
    datatype = Datatype.from_numpy(array.dtype)
    return datatype, np.ascontiguousarray(array, datatype.numpy).tobytes()


def _checked_shape(name: str, shape: list[int], spec: TensorSpec) -> list[int]:
    if len(shape) != len(spec.shape) or any(
        got < 0 or (want != -1 and got != want) for got, want in zip(shape, spec.shape)
    ):
        raise InvalidArgument(f"input {name!r}: shape {shape} does not match the model's {spec.shape}")
    if 0 in shape:
        raise InvalidArgument(f"input {name!r}: shape {shape} holds no elements")
    return shape


def _from_raw(tensor: WireTensor, datatype: Datatype, shape: list[int]) -> np.ndarray:
    data = tensor.raw
    expected = math.prod(shape) * datatype.itemsize
    if len(data) != expected:
        where = "raw contents hold" if tensor.region is None else f"shared memory region {tensor.region.region!r} holds"
        raise InvalidArgument(
            f"input {tensor.name!r}: {where} {len(data)} bytes, shape {shape} of {datatype.value} needs {expected}"
        )
    return np.frombuffer(data, dtype=datatype.numpy).reshape(shape)


def _from_values(tensor: WireTensor, datatype: Datatype, shape: list[int], count: int) -> np.ndarray:
    if tensor.values is None:
        raise InvalidArgument(f"input {tensor.name!r}: {datatype.value} travels only as raw bytes")
    values = tensor.values
    if len(values) != count:
        raise InvalidArgument(
            f"input {tensor.name!r}: {tensor.field} holds {len(values)} values, shape {shape} needs {count}"
        )
    try:
        return np.array(values, dtype=datatype.numpy).reshape(shape)
    except (OverflowError, TypeError, ValueError) as exc:
        raise InvalidArgument(f"input {tensor.name!r}: a value does not fit {datatype.value}") from exc
