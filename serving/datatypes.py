"""Open Inference Protocol tensor datatypes and their numpy equivalents.

Shared by the manifest (what a model declares) and the router's codec (what travels on the
wire), so the two can never disagree about what `FP16` or `INT64` means.
"""

from __future__ import annotations

import enum

import numpy as np


class Datatype(str, enum.Enum):
    """A tensor element type, named as the Open Inference Protocol names it."""

    BOOL = "BOOL"
    UINT8 = "UINT8"
    UINT16 = "UINT16"
    UINT32 = "UINT32"
    UINT64 = "UINT64"
    INT8 = "INT8"
    INT16 = "INT16"
    INT32 = "INT32"
    INT64 = "INT64"
    FP16 = "FP16"
    FP32 = "FP32"
    FP64 = "FP64"

    @property
    def numpy(self) -> np.dtype:
        return _NUMPY[self]

    @property
    def itemsize(self) -> int:
        return _NUMPY[self].itemsize

    @classmethod
    def from_numpy(cls, dtype: np.dtype | type) -> Datatype:
        try:
            return _FROM_NUMPY[np.dtype(dtype)]
        except KeyError:
            raise ValueError(f"no Open Inference Protocol datatype for numpy {np.dtype(dtype)}") from None


# The wire is little-endian (the protocol says so); numpy's "<" types read it on any host.
_NUMPY: dict[Datatype, np.dtype] = {
    Datatype.BOOL: np.dtype(np.bool_),
    Datatype.UINT8: np.dtype("<u1"),
    Datatype.UINT16: np.dtype("<u2"),
    Datatype.UINT32: np.dtype("<u4"),
    Datatype.UINT64: np.dtype("<u8"),
    Datatype.INT8: np.dtype("<i1"),
    Datatype.INT16: np.dtype("<i2"),
    Datatype.INT32: np.dtype("<i4"),
    Datatype.INT64: np.dtype("<i8"),
    Datatype.FP16: np.dtype("<f2"),
    Datatype.FP32: np.dtype("<f4"),
    Datatype.FP64: np.dtype("<f8"),
}
_FROM_NUMPY: dict[np.dtype, Datatype] = {dtype: name for name, dtype in _NUMPY.items()}
