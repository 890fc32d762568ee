"""System shared memory, Triton's extension: tensors in memory a client on the router's host shares.

A client creates a POSIX shared memory segment (`shm_open(key)`; tritonclient.utils.shared_memory
does), registers a window of it under a name, and then names that region, an offset into it and a
byte size in an input's or an output's parameters (`shared_memory_region`, `_offset`,
`_byte_size`) instead of sending the tensor's bytes. The router maps the window once, at
registration; inputs are read from it and outputs written into it on the router's event loop.

Both doors use one `SharedMemory` (router/operations.py calls it). A region unregistered while a
request still uses it stays mapped until that request lets go of it: the mapping is released
with its last reference, never closed under a reader.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import AlreadyExists, InvalidArgument, NotFound
from .tensors import RegionRef, WireTensor

# Where Linux keeps shm_open's segments: `shm_open("/name")` is this folder's file `name`.
SEGMENTS = Path("/dev/shm")

REGION, BYTE_SIZE, OFFSET = "shared_memory_region", "shared_memory_byte_size", "shared_memory_offset"


@dataclass(frozen=True)
class RegionStatus:
    name: str
    key: str
    offset: int  # into the segment
    byte_size: int


@dataclass(frozen=True)
class Region:
    status: RegionStatus
    window: memoryview  # the registered bytes of the segment, writable


def reference(parameters: Mapping[str, object], tensor: str) -> RegionRef | None:
    """The region a tensor's parameters name, checked for form; None when they name none."""
    region = parameters.get(REGION)
    if region is None:
        if BYTE_SIZE in parameters or OFFSET in parameters:
            raise InvalidArgument(f"{tensor}: {BYTE_SIZE} or {OFFSET} without a {REGION} parameter")
        return None
    if not isinstance(region, str) or not region:
        raise InvalidArgument(f"{tensor}: parameter {REGION} must be a region's name, got {region!r}")
    return RegionRef(region, _count(parameters.get(BYTE_SIZE), BYTE_SIZE, tensor), _count(parameters.get(OFFSET, 0), OFFSET, tensor))


def parameters(ref: RegionRef) -> dict[str, str | int]:
    """An output's parameters in the answer: where its bytes were written, and how many."""
    return {REGION: ref.region, BYTE_SIZE: ref.byte_size, **({OFFSET: ref.offset} if ref.offset else {})}


def _count(value: object, key: str, tensor: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(f"{tensor}: parameter {key} must be a number of bytes (an integer ≥ 0), got {value!r}")
    return value


class SharedMemory:
    """The registered regions, by name."""

    def __init__(self, segments: Path = SEGMENTS) -> None:
        self._segments = segments
        self._regions: dict[str, Region] = {}

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if not name:
            raise InvalidArgument("a shared memory region needs a name")
        if name in self._regions:
            raise AlreadyExists(f"shared memory region {name!r} is already registered; unregister it first")
        segment = key.removeprefix("/")
        if not segment or "/" in segment or segment in (".", ".."):
            raise InvalidArgument(f"{key!r} is not the name of a shared memory segment (one '/' then a name)")
        if byte_size <= 0:
            raise InvalidArgument(f"shared memory region {name!r}: byte_size must be positive, got {byte_size}")
        try:
            fd = os.open(self._segments / segment, os.O_RDWR)
        except OSError as exc:
            raise InvalidArgument(f"unable to open shared memory segment {key!r}: {exc.strerror}") from None
        try:
            size = os.fstat(fd).st_size
            if offset + byte_size > size:
                raise InvalidArgument(
                    f"shared memory region {name!r}: offset {offset} + byte_size {byte_size} runs past the end of "
                    f"segment {key!r} ({size} bytes)"
                )
            mapping = mmap.mmap(fd, offset + byte_size)
        finally:
            os.close(fd)
        window = memoryview(mapping)[offset:]
        self._regions[name] = Region(RegionStatus(name, key, offset, byte_size), window)

    def unregister(self, name: str) -> None:
        """Forget region `name` (every region when empty); an unknown name is no error, as in Triton."""
        if name:
            self._regions.pop(name, None)
        else:
            self._regions.clear()

    def status(self, name: str) -> list[RegionStatus]:
        """Region `name`, or every region when empty."""
        if not name:
            return [region.status for region in self._regions.values()]
        if name not in self._regions:
            raise NotFound(f"unable to find system shared memory region: {name!r}")
        return [self._regions[name].status]

    def read(self, tensors: Sequence[WireTensor]) -> list[WireTensor]:
        """The inputs, those in shared memory with their region's bytes as their raw contents."""
        return [t if t.region is None else replace(t, raw=self.window(t.region, f"input {t.name!r}")) for t in tensors]

    def window(self, ref: RegionRef, tensor: str) -> memoryview:
        """The bytes `ref` names, checked to lie within its region."""
        region = self._regions.get(ref.region)
        if region is None:
            raise InvalidArgument(f"{tensor}: unable to find system shared memory region: {ref.region!r}")
        if ref.offset + ref.byte_size > region.status.byte_size:
            raise InvalidArgument(
                f"{tensor}: offset {ref.offset} + byte_size {ref.byte_size} runs past the end of shared memory "
                f"region {ref.region!r} ({region.status.byte_size} bytes)"
            )
        return region.window[ref.offset : ref.offset + ref.byte_size]


def write(window: memoryview, data: bytes, tensor: str, ref: RegionRef) -> RegionRef:
    """Put an output's bytes at the start of its window; the reference to what was written."""
    if len(data) > len(window):
        raise InvalidArgument(
            f"{tensor}: shared memory byte_size {len(window)} is too small for the {len(data)} bytes of the result"
        )
    window[: len(data)] = data
    return RegionRef(ref.region, len(data), ref.offset)
