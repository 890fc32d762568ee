"""The capture of live traffic: bounded and rotating, encrypted with the model key, read by `quiver optimize`, refused when misconfigured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from quiver.serving import Manifest
from quiver.serving.capture import CaptureSettings, VersionCapture
from quiver.serving.optimize import DatasetError, load_dataset

SIGNATURE = Manifest.model_validate({
    "name": "m", "version": "1",
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
    "variants": [{"name": "fp32", "file": "model.onnx", "sha256": "0" * 64}],
})


def capture_rows(capture: VersionCapture, rows: int, start: int = 0) -> None:
    """Add `rows` one at a time, x = [i, i, i, i], writing each segment as it fills (the router does so off its loop)."""
    for i in range(start, start + rows):
        x = np.full((1, 4), i, np.float32)
        if capture.add({"x": x}, {"y": np.eye(3, dtype=np.float32)[[i % 3]]}, np.array([i % 3])):
            capture.write(capture.take())


def test_segments_rotate_within_the_bound(tmp_path: Path) -> None:
    settings = CaptureSettings(tmp_path / "capture", max_bytes=4000, segment_rows=8)
    capture = VersionCapture(settings, "m", "1")
    sizes = []
    for start in range(0, 400, 8):
        capture_rows(capture, 8, start)
        sizes.append(sum(path.stat().st_size for path in capture.directory.iterdir()))
    assert max(sizes) <= settings.max_bytes  # never past the bound, after any write
    segments = sorted(path.name for path in capture.directory.iterdir())
    assert 1 < len(segments) < 50 and segments[-1] == f"000000000050-{settings.writer}.npz"  # the oldest went first
    data = load_dataset(capture.directory, SIGNATURE)
    kept = data.inputs["x"][:, 0].astype(int)
    np.testing.assert_array_equal(kept, np.arange(400 - len(kept), 400))  # the newest rows, in order
    np.testing.assert_array_equal(data.labels, kept % 3)


def test_router_pods_share_a_capture_directory_without_replacing_each_others_segments(tmp_path: Path) -> None:
    """Two writers (router pods) on one directory: each names its segments after itself, the bound
    is the directory's, a segment the other pruned first is no error, and the reader takes them all."""
    a, b = (VersionCapture(CaptureSettings(tmp_path, max_bytes=4000, segment_rows=8, writer=w), "m", "1") for w in ("pod-a", "pod-b"))
    # Both buffer a segment as their first, as two pods that started together do: neither replaces the other's.
    capture_rows(a, 8, 0)
    b.add({"x": np.full((8, 4), 8, np.float32)}, {"y": np.eye(3, dtype=np.float32)[[0] * 8]}, np.zeros(8, int))
    (b.directory / "000000000001-pod-a.npz").rename(tmp_path / "aside.npz")  # b lists before a's segment lands
    b.write(b.take())
    (tmp_path / "aside.npz").rename(b.directory / "000000000001-pod-a.npz")
    assert sorted(path.name for path in a.directory.iterdir()) == ["000000000001-pod-a.npz", "000000000001-pod-b.npz"]
    assert load_dataset(a.directory, SIGNATURE).rows == 16
    # Taking turns, each prunes the oldest of either, and the directory holds the bound.
    sizes = []
    for start in range(16, 400, 8):
        capture_rows(a if start % 16 else b, 8, start)
        sizes.append(sum(path.stat().st_size for path in a.directory.iterdir()))
    assert max(sizes) <= 4000 and a.dropped == b.dropped == 0
    names = sorted(path.name for path in a.directory.iterdir())
    assert {name.split("-", 1)[1] for name in names} == {"pod-a.npz", "pod-b.npz"}
    kept = load_dataset(a.directory, SIGNATURE).inputs["x"][:, 0].astype(int)
    np.testing.assert_array_equal(kept, np.arange(400 - len(kept), 400))  # the newest rows of both, in order
    # A pod that is gone leaves its segments: the others prune them like their own.
    ghost = a.directory / "000000000000-pod-gone.npz"
    ghost.write_bytes(b"x" * 3000)
    capture_rows(b, 8, 400)
    assert not ghost.exists() and b.dropped == 0
    with pytest.raises(ValueError, match="letters, digits"):
        CaptureSettings(tmp_path, writer="../x")


def test_a_segment_larger_than_the_bound_is_not_written(tmp_path: Path) -> None:
    capture = VersionCapture(CaptureSettings(tmp_path, max_bytes=100, segment_rows=4), "m", "1")
    capture_rows(capture, 8)
    assert capture.dropped == 2 and not any(capture.directory.glob("*.npz*"))


def test_an_encrypted_capture_needs_the_model_key(tmp_path: Path) -> None:
    key, other = os.urandom(32), os.urandom(32)
    capture = VersionCapture(CaptureSettings(tmp_path, segment_rows=5, key=key, writer="router-a"), "m", "1")
    capture_rows(capture, 10)
    segments = sorted(capture.directory.iterdir())
    assert [path.name for path in segments] == ["000000000001-router-a.npz.enc", "000000000002-router-a.npz.enc"]
    assert b"PK" not in segments[0].read_bytes()[:64]  # not a readable zip: ciphertext
    assert load_dataset(capture.directory, SIGNATURE, key).rows == 10
    with pytest.raises(DatasetError, match="encrypted"):
        load_dataset(capture.directory, SIGNATURE)
    with pytest.raises(DatasetError, match="do not decrypt"):
        load_dataset(capture.directory, SIGNATURE, other)
    moved = tmp_path / "m" / "2"
    capture.directory.rename(moved)  # the model and version are bound: another version's capture does not decrypt
    with pytest.raises(DatasetError, match="do not decrypt"):
        load_dataset(moved, SIGNATURE, key)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--capture", "/proc/quiver-capture"], "--capture: cannot create /proc/quiver-capture"),
        (["--capture", "{tmp}", "--capture-rate", "1.5"], "--capture-rate: 1.5 is outside [0, 1]"),
        (["--capture", "{tmp}", "--capture-max-mb", "0"], "--capture-max-mb"),
        (["--shadow-rate", "-0.5"], "--shadow-rate: -0.5 is outside [0, 1]"),
    ],
)
@pytest.mark.parametrize("command", ["serve", "router"])
def test_quiver_serve_and_router_refuse_bad_capture_and_shadow_flags(tmp_path: Path, flags: list[str], message: str, command: str) -> None:
    args = [flag.format(tmp=tmp_path) for flag in flags]
    if command == "router":  # refused before it joins any Ray cluster: nothing listens at this address
        args += ["--ray-address", "127.0.0.1:9", "--store", str(tmp_path), "--routes", str(tmp_path / "routes.json")]
    done = subprocess.run([sys.executable, "-m", "quiver", command, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and message in done.stderr, done.stderr

