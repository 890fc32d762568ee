"""Captured live traffic: sampled inputs (and the reference's outputs) per model version, for recalibration.

The router (router/shadow.py) hands rows here; they are written as segments that `quiver
optimize --calibration` and `--eval` read as they read any `.npz` (serving/optimize/datasets.py):

    CAPTURE/<model>/<version>/000000000001-<writer>.npz   one array per model input, `labels` (the
                                                          reference's top-1, when its output has classes)
                                                          and `output:<name>`, the reference's outputs

With a model key the segment is AES-256-GCM encrypted (`.npz.enc`, serving/crypto.py), the
model and version bound as associated data. Each version's directory is held to `max_bytes`:
the oldest segments go first, and a segment larger than the bound is not written at all, so the
capture never takes more disk than it was given. Segments are built in memory up to
`segment_rows` and written off the event loop.

Several routers (the chart's pods) may write one directory: each names its segments after
itself (`writer`: host name and process id), so none replaces another's, and numbers them after
the newest of any writer. The bound is the directory's: a writer prunes the oldest segments,
whoever wrote them (those of a pod that is gone too), and one another writer pruned first is
already gone, not an error. Readers take every writer's segments.
"""

from __future__ import annotations

import io
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import crypto
from .requests import rows

OUTPUT_PREFIX = "output:"  # the reference's outputs in a segment; datasets ignore them
LABELS = "labels"
_SEGMENT = re.compile(r"^(\d{12})(-[A-Za-z0-9_-]+)?\.npz(\.enc)?$")  # without a writer: written before there were several
_WRITER = re.compile(r"[A-Za-z0-9_-]+")


def _this_writer() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"{socket.gethostname()}-{os.getpid()}")


@dataclass(frozen=True)
class CaptureSettings:
    """What `quiver serve --capture DIR` captures; the router samples `sample_rate` of the requests it may capture."""

    directory: Path
    sample_rate: float = 0.01
    max_bytes: int = 256 << 20  # per model version
    segment_rows: int = 256
    key: bytes | None = None  # the model key: segments are encrypted with it
    writer: str = field(default_factory=_this_writer)  # in this writer's segment names: unique among the directory's writers

    def __post_init__(self) -> None:
        if not _WRITER.fullmatch(self.writer):
            raise ValueError(f"capture writer {self.writer!r}: letters, digits, '_' and '-' only")
        if not 0 <= self.sample_rate <= 1:
            raise ValueError(f"--capture-rate: {self.sample_rate} is outside [0, 1]")
        if self.max_bytes <= 0:
            raise ValueError(f"--capture-max-mb: {self.max_bytes >> 20} must be above 0")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"--capture: cannot create {self.directory}: {exc.strerror}") from None
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise ValueError(f"--capture: {self.directory} is not writable")


def associated_data(model: str, version: str) -> bytes:
    return crypto.associated_data(model, version, "capture")


class VersionCapture:
    """One model version's rotating capture: rows buffered here, segments written by `flush`."""

    def __init__(self, settings: CaptureSettings, model: str, version: str) -> None:
        self.settings = settings
        self._model, self._version = model, version
        self.directory = settings.directory / model / version
        self._rows: list[dict[str, np.ndarray]] = []
        self.dropped = 0  # segments not written: over the bound on their own, or the disk refused them

    def add(self, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray], labels: np.ndarray | None) -> bool:
        """Buffer one request's rows; True when a segment is full (then `flush`, off the loop)."""
        row = {**inputs, **{OUTPUT_PREFIX + name: array for name, array in outputs.items()}}
        if labels is not None:
            row[LABELS] = labels
        self._rows.append(row)
        return sum(rows(r) for r in self._rows) >= self.settings.segment_rows

    def take(self) -> dict[str, np.ndarray] | None:
        """The buffered rows as one segment's arrays (None if none), leaving the buffer empty."""
        rows, self._rows = self._rows, []
        if not rows:
            return None
        return {name: np.concatenate([row[name] for row in rows]) for name in rows[0]}

    def write(self, arrays: dict[str, np.ndarray]) -> int:
        """Write one segment within the bound (blocking: run it in a thread); returns the bytes written."""
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        content = buffer.getvalue()
        if self.settings.key is not None:
            content = crypto.encrypt(content, self.settings.key, associated_data(self._model, self._version))
        if len(content) > self.settings.max_bytes:
            self.dropped += 1
            return 0
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            segments = _sizes(_segments(self.directory))
            number = int(_SEGMENT.match(segments[-1][0].name)[1]) + 1 if segments else 1
            used = sum(size for _, size in segments)
            while segments and used + len(content) > self.settings.max_bytes:
                oldest, size = segments.pop(0)
                oldest.unlink(missing_ok=True)  # another writer may have pruned it first
                used -= size
            name = f"{number:012d}-{self.settings.writer}.npz" + (".enc" if self.settings.key is not None else "")
            partial = self.directory / f".{name}.partial"
            partial.write_bytes(content)
            partial.rename(self.directory / name)  # readers never see half a segment
        except OSError:
            self.dropped += 1
            raise
        return len(content)


def _segments(directory: Path) -> list[Path]:
    """Every writer's segments, oldest first."""
    return sorted((path for path in directory.iterdir() if _SEGMENT.match(path.name)), key=lambda path: path.name)


def _sizes(segments: list[Path]) -> list[tuple[Path, int]]:
    """The segments with their sizes, less those another writer pruned since they were listed."""
    sized = []
    for path in segments:
        try:
            sized.append((path, path.stat().st_size))
        except FileNotFoundError:
            continue
    return sized


def read_capture(directory: Path, key: bytes | None) -> dict[str, np.ndarray]:
    """Every segment of one version's capture, joined (the arrays `quiver optimize` reads, the
    reference's outputs among them); encrypted segments need the model key."""
    segments = _segments(directory)
    if not segments:
        raise ValueError(f"{directory}: no captured segments")
    model, version = directory.parent.name, directory.name
    parts = []
    for path in segments:
        content = path.read_bytes()
        if path.name.endswith(".enc"):
            if key is None:
                raise ValueError(f"{path}: encrypted; give the model key (--encrypt-key)")
            content = crypto.decrypt(content, key, associated_data(model, version))
        with np.load(io.BytesIO(content), allow_pickle=False) as archive:
            parts.append({name: archive[name] for name in archive.files})
    names = set(parts[0])
    if any(set(part) != names for part in parts):
        raise ValueError(f"{directory}: segments hold different arrays")
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
