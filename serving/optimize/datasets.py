"""Calibration and evaluation sets: `.npz` files with one array per model input.

An eval set may also hold `labels` (class indices, one per row) for top-1 accuracy. A directory
is a capture of live traffic (serving/capture.py): its segments are joined, the reference's
outputs they also hold are left aside, and encrypted ones need the model key. Each array is checked against the model's signature here, so a mismatch is reported before any
variant is built.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import capture
from ..crypto import DecryptionError
from ..manifest import Manifest

LABELS = "labels"


class DatasetError(Exception):
    """A calibration or eval file does not fit the model."""


@dataclass(frozen=True)
class Dataset:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None

    @property
    def rows(self) -> int:
        return len(next(iter(self.inputs.values())))

    def batches(self, size: int) -> list[dict[str, np.ndarray]]:
        return [{name: array[i : i + size] for name, array in self.inputs.items()} for i in range(0, self.rows, size)]


def load_dataset(path: Path, manifest: Manifest, key: bytes | None = None) -> Dataset:
    """The set in `path`: an `.npz` file, or a capture directory (`key` decrypts its segments)."""
    try:
        if path.is_dir():
            arrays = capture.read_capture(path, key)
            arrays = {name: array for name, array in arrays.items() if not name.startswith(capture.OUTPUT_PREFIX)}
        else:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
    except DecryptionError as exc:
        raise DatasetError(f"{path}: captured segments do not decrypt: {exc}") from exc
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"{path}: not a readable .npz file or capture ({exc})") from exc
    expected = [spec.name for spec in manifest.inputs]
    unknown = sorted(set(arrays) - set(expected) - {LABELS})
    missing = [name for name in expected if name not in arrays]
    if unknown or missing:
        raise DatasetError(f"{path}: arrays {sorted(arrays)} do not match model inputs {expected} (+ optional {LABELS!r})")
    inputs = {}
    for spec in manifest.inputs:
        array = arrays[spec.name]
        if array.dtype != spec.datatype.numpy:
            raise DatasetError(f"{path}: {spec.name!r} is {array.dtype}, the model takes {spec.datatype.value}")
        if array.ndim != len(spec.shape) or any(want not in (-1, got) for got, want in zip(array.shape, spec.shape)):
            raise DatasetError(f"{path}: {spec.name!r} has shape {list(array.shape)}, the model takes {spec.shape}")
        inputs[spec.name] = array
    rows = {len(array) for array in inputs.values()}
    if len(rows) != 1 or 0 in rows:
        raise DatasetError(f"{path}: inputs must share a non-zero number of rows, got {sorted(rows)}")
    labels = arrays.get(LABELS)
    if labels is not None and (labels.shape != (rows.pop(),) or not np.issubdtype(labels.dtype, np.integer)):
        raise DatasetError(f"{path}: {LABELS!r} must be integer class indices, one per row")
    return Dataset(inputs, labels)
