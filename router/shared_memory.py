"""System shared memory, Triton's extension: tensors in memory a client on the router's host shares.

A client creates a POSIX shared memory segment (`shm_open(key)`; tritonclient.utils.shared_memory
does), registers a window of it under a name, and then names that region, an offset into it and a
byte size in an input's or an output's parameters (`shared_memory_region`, `_offset`,
`_byte_size`) instead of sending the tensor's bytes. The router maps the window once, at
registration; outputs are written into it on the router's event loop. An input is read from it
as a view, never copied here: a replica on this host (serving/segments.py) is sent where its
bytes lie and maps the segment itself; one on another node is sent the bytes.

Both doors use one `SharedMemory` (router/operations.py calls it). A region unregistered while a
request still uses it stays mapped until that request lets go of it: the mapping is released
with its last reference, never closed under a reader. A segment the client shrank after
registering it is refused per request: touching a mapping past a segment's end would kill the
router. It is checked when the request is read and again just before its bytes are (how much that
leaves unguarded: serving/segments.py). A segment name that is a symbolic link, a FIFO or anything
but a regular file of /dev/shm is refused at registration.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from quiver.serving import segments

from .errors import AlreadyExists, InvalidArgument, NotFound
from .tensors import RegionRef, WireTensor

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
    fd: int  # the segment, kept open to see its size now
    mapped: int  # its mapping's key in segments.MAPPED


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

    def __init__(self, folder: Path = segments.FOLDER) -> None:
        self._folder = folder
        self._regions: dict[str, Region] = {}

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if not name:
            raise InvalidArgument("a shared memory region needs a name")
        if name in self._regions:
            raise AlreadyExists(f"shared memory region {name!r} is already registered; unregister it first")
        try:
            segment = segments.segment_name(key)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        if byte_size <= 0:
            raise InvalidArgument(f"shared memory region {name!r}: byte_size must be positive, got {byte_size}")
        try:
            fd, stat = segments.open_segment(self._folder, segment, os.O_RDWR)
        except segments.SegmentError as exc:
            raise InvalidArgument(f"unable to open shared memory segment {key!r}: {exc}") from None
        try:
            if offset + byte_size > stat.st_size:
                raise InvalidArgument(
                    f"shared memory region {name!r}: offset {offset} + byte_size {byte_size} runs past the end of "
                    f"segment {key!r} ({stat.st_size} bytes)"
                )
            mapping = mmap.mmap(fd, offset + byte_size)
        except BaseException:
            os.close(fd)
            raise
        mapped = segments.MAPPED.add(mapping, segment, stat.st_ino)
        self._regions[name] = Region(RegionStatus(name, key, offset, byte_size), memoryview(mapping)[offset:], fd, mapped)

    def unregister(self, name: str) -> None:
        """Forget region `name` (every region when empty); an unknown name is no error, as in Triton."""
        for region in [self._regions.pop(name, None)] if name else [*self._regions.values()]:
            if region is not None:
                segments.MAPPED.remove(region.mapped)
                os.close(region.fd)
        if not name:
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
        segment, registered = os.fstat(region.fd), region.status.offset + region.status.byte_size
        if segment.st_size < registered:
            raise InvalidArgument(
                f"{tensor}: shared memory segment {region.status.key!r} holds {segment.st_size} bytes now, fewer than the "
                f"{registered} region {ref.region!r} was registered with: it was resized; register it again"
            )
        if not segment.st_nlink:  # unlinked by the client: no replica can open it by its name, its inputs travel as bytes
            segments.MAPPED.remove(region.mapped)
        return region.window[ref.offset : ref.offset + ref.byte_size]


def write(window: memoryview, data: bytes, tensor: str, ref: RegionRef) -> RegionRef:
    """Put an output's bytes at the start of its window; the reference to what was written."""
    if len(data) > len(window):
        raise InvalidArgument(
            f"{tensor}: shared memory byte_size {len(window)} is too small for the {len(data)} bytes of the result"
        )
    try:
        segments.check_size(window)  # again: the client may have shrunk it while the request ran
    except segments.SegmentError as exc:
        raise InvalidArgument(f"{tensor}: {exc}") from None
    window[: len(data)] = data
    return RegionRef(ref.region, len(data), ref.offset)
