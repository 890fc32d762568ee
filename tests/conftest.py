"""Shared fixtures: a model store, one `quiver serve` process and, for the tests that ask for it,
one real Kubernetes control plane (tests/k8s/control_plane.py) for the whole session, with a
real node (tests/k8s/node.py) that runs pods for the tests that ask for it too."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .models import write_store
from .serverproc import ServerProcess, quiver_serve

if TYPE_CHECKING:
    from .k8s.control_plane import ControlPlane
    from .k8s.node import Node

# Small enough that a test can cross it cheaply, large enough for every regular request.
MAX_REQUEST_MB = 1


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_store(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="session")
def traffic_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session server's version weights; tests that change them put `{"models": {}}` back."""
    path = tmp_path_factory.mktemp("traffic") / "traffic.json"
    path.write_text('{"models": {}}')
    return path


@pytest.fixture(scope="session")
def server(store: Path, traffic_file: Path) -> Iterator[ServerProcess]:
    # The local node joins a "gpu" pool too (without a GPU: fp16 falls back to the CPU), so
    # every variant of the store has a node to run on.
    with quiver_serve(
        str(store), "--max-request-mb", str(MAX_REQUEST_MB), "--pools", "cpu,gpu", "--traffic-file", str(traffic_file)
    ) as process:
        yield process


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    from .k8s.control_plane import control_plane as start  # the kubernetes client takes a second to import

    with start(tmp_path_factory.mktemp("k8s")) as cp:
        yield cp


@pytest.fixture(scope="session")
def node(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """Once up, it runs every pod the session schedules: modules that play the kubelet instead
    (tests/cluster.py) must not share a session with it before they finish (they sort before it)."""
    from .k8s.node import node as start

    with start(control_plane, tmp_path_factory.mktemp("node")) as ready:
        yield ready
