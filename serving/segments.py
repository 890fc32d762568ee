"""Shared memory segments on one host: inputs a router hands a replica there by reference, not by value.

A client on the router's host puts a tensor in a POSIX shared memory segment (`shm_open`: a file
under /dev/shm) and registers a window of it with the router (router/shared_memory.py), which
maps it. A replica that sees the same /dev/shm (`host()` is equal at both ends: the same boot,
the same tmpfs) need not be sent those bytes over its data plane (serving/dataplane.py): the
router sends where they lie, and the replica maps the segment itself, read-only.

Both ends live here. The router registers each mapping in `MAPPED`, a table of the process's
address ranges (addresses are the process's, so is the table): an input array whose memory lies
in one of them (a view the router made of the client's region, never a copy) is found there as a
`Slice` of its segment. The router takes a segment out of the table once the client unlinked it
(no replica could open it by its name any more): its inputs travel as bytes again.

The replica maps what it is sent through `Segments`, keeping one mapping per segment for the
next request, and letting go of those whose segment was unlinked (the memory is freed with the
last mapping) when its owner sweeps them (the data plane does, once a second).
Its checks say why a request cannot be read rather than crash the process: a name that is not a
regular file of /dev/shm's own filesystem (a symbolic link, a FIFO) is never opened through, a
segment removed or replaced since the router registered it (another inode under the name) is
refused, and since touching a mapping past the end of a segment the client shrank kills the
process (SIGBUS), each read first compares the segment's current size (one `fstat`).

That comparison guards only the moment it is made. The router re-checks (`check_size`) just
before it copies an input into a message or writes an output, so what is left unguarded there is
a shrink in that instant, as in Triton; inputs handed to Serve's handle (the fallback when a
replica's data plane is not listed) are re-checked just before Ray pickles them
(router/replicas.py). A replica on this
host reads its inputs during its batch wait and run: a client that shrinks its segment meanwhile
kills that replica (its calls in flight fail and are retried), never the router.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Where Linux keeps shm_open's segments: `shm_open("/name")` is this folder's file `name`.
FOLDER = Path("/dev/shm")


class SegmentError(Exception):
    """A slice of a segment cannot be read (gone, replaced, shrunk): that request fails, not the process."""


@dataclass(frozen=True)
class Slice:
    """`byte_size` bytes at `offset` into segment `name` (a file of /dev/shm), the one with inode `inode`."""

    name: str
    offset: int
    byte_size: int
    inode: int


def host(folder: Path = FOLDER) -> str:
    """Who sees the same shared memory: equal in two processes exactly when they share `folder`'s
    filesystem on one boot of one machine; empty (equal to nothing) where that cannot be told."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}:{os.stat(folder).st_dev}"
    except OSError:
        return ""


def segment_name(key: str) -> str:
    """The file under /dev/shm that `shm_open(key)` opens; ValueError for a key that names no such file."""
    name = key.removeprefix("/")
    if not name or "/" in name or "\0" in name or name in (".", ".."):
        raise ValueError(f"{key!r} is not the name of a shared memory segment (one '/' then a name)")
    return name


def open_segment(folder: Path, name: str, flags: int) -> tuple[int, os.stat_result]:
    """Open segment `name` (a `segment_name`) of `folder` with `flags`, and its status; `SegmentError` unless it
    is a regular file of `folder`'s own filesystem. A client can put anything under a name in the
    world-writable /dev/shm: a symbolic link would lead the open elsewhere, and opening a FIFO blocks."""
    try:
        fd = os.open(folder / name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise SegmentError("a symbolic link, not a segment" if exc.errno == errno.ELOOP else exc.strerror) from None
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode) or status.st_dev != os.stat(folder).st_dev:
        os.close(fd)
        raise SegmentError(f"not a regular file of {folder}")
    return fd, status


def check_size(view: np.ndarray | memoryview) -> None:
    """`SegmentError` if `view` lies in a mapping of a file now shorter than the mapping. Touching bytes past
    the file's end would kill the process (SIGBUS): call this just before reading or writing them."""
    mapping = view
    while isinstance(mapping, np.ndarray):
        mapping = mapping.base
    if isinstance(mapping, memoryview):
        mapping = mapping.obj
    if isinstance(mapping, mmap.mmap) and (size := mapping.size()) < len(mapping):
        raise SegmentError(
            f"its shared memory segment holds {size} bytes now, fewer than the {len(mapping)} its region was "
            "registered with: it was resized; register it again"
        )


class _Ranges:
    """The router's mappings of segments, by address: which segment an input array's memory lies in."""

    def __init__(self) -> None:
        self._ranges: dict[int, tuple[int, str, int]] = {}  # start → (end, segment, inode)

    def add(self, mapping: mmap.mmap, name: str, inode: int) -> int:
        """Note a mapping of segment `name` from its first byte; the key to `remove` it by."""
        start = np.frombuffer(mapping, np.uint8).ctypes.data
        self._ranges[start] = (start + len(mapping), name, inode)
        return start

    def remove(self, start: int) -> None:
        self._ranges.pop(start, None)

    def find(self, array: np.ndarray) -> Slice | None:
        """Where `array`'s bytes lie in a segment mapped here, if they do, in the order they would be sent."""
        if not self._ranges or not array.flags.c_contiguous or array.dtype.byteorder == ">":
            return None
        first = array.ctypes.data
        for start, (end, name, inode) in self._ranges.items():
            if start <= first and first + array.nbytes <= end:
                return Slice(name, first - start, array.nbytes, inode)
        return None


# The router's table (router/shared_memory.py fills it; the data plane's client reads it).
MAPPED = _Ranges()


class _Mapping:
    __slots__ = ("fd", "inode", "mapping", "view")

    def __init__(self, fd: int, inode: int) -> None:
        self.fd = fd
        self.inode = inode
        self.mapping: mmap.mmap | None = None
        self.view = memoryview(b"")

    def covering(self, end: int, size: int) -> memoryview:
        """A view of at least `end` bytes, mapping the segment's `size` bytes anew if the last mapping is shorter;
        ValueError if the segment shrank below `size` meanwhile (mmap checks), OSError if it cannot be mapped."""
        if end > len(self.view):  # the segment grew, or this is the first read: map it as it is now
            self.mapping = mmap.mmap(self.fd, size, prot=mmap.PROT_READ)
            self.view = memoryview(self.mapping)
        return self.view


class Segments:
    """A replica's read-only mappings of the segments it was sent slices of, the `most` last used kept.

    A mapping dropped from the cache lives on while an array still views it (the memory goes with
    its last reference), so nothing read is ever unmapped under a reader.
    """

    def __init__(self, folder: Path = FOLDER, most: int = 64) -> None:
        self._folder = folder
        self._most = most
        self._open: OrderedDict[str, _Mapping] = OrderedDict()

    def read(self, where: Slice) -> memoryview:
        """The slice's bytes, read-only, without a copy; `SegmentError` if they cannot be read."""
        mapped = self._open.get(where.name)
        if mapped is None or mapped.inode != where.inode:
            mapped = self._reopen(where)
        self._open.move_to_end(where.name)
        end = where.offset + where.byte_size
        size = os.fstat(mapped.fd).st_size
        if end > size:
            raise SegmentError(
                f"shared memory segment {where.name!r} holds {size} bytes now, fewer than the {end} its region was "
                "registered with: it was resized; register it again"
            )
        try:
            return mapped.covering(end, size)[where.offset : end]
        except (OSError, ValueError) as exc:  # shrunk since the fstat; too large for the address space; too many mappings
            raise SegmentError(f"shared memory segment {where.name!r} cannot be mapped here: {exc}") from None

    def close(self) -> None:
        for mapped in self._open.values():
            os.close(mapped.fd)
        self._open.clear()

    def _reopen(self, where: Slice) -> _Mapping:
        self._forget(where.name)
        try:
            fd, status = open_segment(self._folder, segment_name(where.name), os.O_RDONLY)
        except (SegmentError, ValueError) as exc:
            raise SegmentError(f"shared memory segment {where.name!r} cannot be opened here: {exc}") from None
        mapped = _Mapping(fd, status.st_ino)
        if mapped.inode != where.inode:
            os.close(fd)
            raise SegmentError(
                f"shared memory segment {where.name!r} was removed or replaced since its region was registered; register it again"
            )
        self._open[where.name] = mapped
        while len(self._open) > self._most:
            self._forget(next(iter(self._open)))
        return mapped

    def sweep(self) -> None:
        """Let go of the mappings of segments unlinked since they were mapped."""
        for name in [name for name, mapped in self._open.items() if not os.fstat(mapped.fd).st_nlink]:
            self._forget(name)

    def _forget(self, name: str) -> None:
        mapped = self._open.pop(name, None)
        if mapped is not None:
            os.close(mapped.fd)
