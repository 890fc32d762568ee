"""Triton's model repository extension against `quiver serve STORE`, through tritonclient (gRPC and HTTP).

A server of its own (loading and unloading change what it serves): a store with two versions
of `pair`. One version is unloaded and loaded back while a client keeps calling the other, and
none of those calls fails.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.grpc as triton
import tritonclient.http as triton_http
from onnx import TensorProto, helper

from quiver.serving import Replicas, from_onnx_file, write_version

from .models import PAIR_TABLE, build_pair, reference
from .serverproc import ServerProcess, quiver_serve


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repository")
    for version in ("1", "2"):
        signature = from_onnx_file(build_pair(root / "pair" / version / "model.onnx")).manifest
        variant = signature.variants[0].model_copy(update={"replicas": Replicas(num_cpus=0.25)})
        write_version(root, signature.model_copy(update={"name": "pair", "version": version, "variants": [variant]}))
    return root


@pytest.fixture(scope="module")
def traffic_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("repository-traffic") / "traffic.json"
    path.write_text(json.dumps({"models": {"pair": {"1": 0, "2": 1}}}))  # unpinned requests go to version 2
    return path


@pytest.fixture(scope="module")
def server(store: Path, traffic_file: Path) -> Iterator[ServerProcess]:
    with quiver_serve(str(store), "--pools", "cpu", "--traffic-file", str(traffic_file)) as process:
        yield process


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.address)


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> triton_http.InferenceServerClient:
    return triton_http.InferenceServerClient(server.http_url.removeprefix("http://"), network_timeout=300)


def pair_inputs(rows: int = 2) -> tuple[list[triton.InferInput], dict[str, np.ndarray]]:
    feeds = {"x": np.arange(3 * rows, dtype=np.float32).reshape(rows, 3), "k": np.arange(2 * rows, dtype=np.int64).reshape(rows, 2) % len(PAIR_TABLE)}
    tensors = []
    for name, datatype in (("x", "FP32"), ("k", "INT64")):
        tensors.append(triton.InferInput(name, list(feeds[name].shape), datatype))
        tensors[-1].set_data_from_numpy(feeds[name])
    return tensors, feeds


def index(client: triton.InferenceServerClient) -> dict[str, tuple[str, str]]:
    return {m.version: (m.state, m.reason) for m in client.get_model_repository_index().models if m.name == "pair"}


def ready_index(server: ServerProcess) -> list[dict]:
    """What `curl -d '{"ready": true}' .../v2/repository/index` answers (tritonclient 2.41 cannot ask for ready only)."""
    request = urllib.request.Request(f"{server.http_url}/v2/repository/index", data=b'{"ready": true}')
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


class Caller:
    """Calls version 2 over and over on its own thread, counting answers and failures."""

    def __init__(self, address: str) -> None:
        self.ok, self.failures = 0, []
        self.answered = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(address,), daemon=True)
        self._thread.start()

    def _run(self, address: str) -> None:
        client = triton.InferenceServerClient(address)
        tensors, _ = pair_inputs()
        while not self._stop.is_set():
            try:
                client.infer("pair", tensors, model_version="2", client_timeout=60)
            except triton.InferenceServerException as error:
                self.failures.append(error)
            with self.answered:
                self.ok += 1
                self.answered.notify_all()

    def wait_for_more(self, than: int) -> None:
        with self.answered:
            assert self.answered.wait_for(lambda: self.ok > than, timeout=60)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(120)


def test_the_index_lists_the_stores_versions_and_the_extension_is_listed(client: triton.InferenceServerClient) -> None:
    assert index(client) == {"1": ("READY", ""), "2": ("READY", "")}
    assert "model_repository" in client.get_server_metadata().extensions


def test_a_version_unloads_and_loads_back_while_the_other_keeps_answering(
    client: triton.InferenceServerClient, http: triton_http.InferenceServerClient, server: ServerProcess, store: Path
) -> None:
    caller = Caller(server.address)
    try:
        caller.wait_for_more(than=0)
        # Triton's way to serve a subset of a model's versions: a load whose config names them.
        before = caller.ok
        client.load_model("pair", config=json.dumps({"version_policy": {"specific": {"versions": [2]}}}))
        assert caller.ok > before  # the other version answered while this one left
        assert index(client) == {"1": ("UNAVAILABLE", "unloaded"), "2": ("READY", "")}
        assert ready_index(server) == [{"name": "pair", "version": "2", "state": "READY", "reason": ""}]
        assert not client.is_model_ready("pair", "1") and client.is_model_ready("pair", "2")
        with pytest.raises(triton.InferenceServerException) as error:
            client.infer("pair", pair_inputs()[0], model_version="1")
        assert error.value.status() == "StatusCode.NOT_FOUND"

        before = caller.ok
        http.load_model("pair")  # no config: every version in the store
        assert caller.ok > before
        caller.wait_for_more(than=caller.ok)
    finally:
        caller.stop()
    assert caller.failures == []
    assert index(client) == {"1": ("READY", ""), "2": ("READY", "")}
    tensors, feeds = pair_inputs(3)
    result = client.infer("pair", tensors, model_version="1")
    expected = reference(store / "pair" / "1" / "model.onnx", feeds)
    np.testing.assert_allclose(result.as_numpy("total"), expected["total"])
    np.testing.assert_array_equal(result.as_numpy("looked_up"), expected["looked_up"])


@pytest.mark.parametrize(
    ("call", "status", "message"),
    [
        (lambda c: c.load_model("nope"), ("StatusCode.NOT_FOUND", "404"), "holds no model 'nope'"),
        (lambda c: c.load_model("pair", config='{"max_batch_size": 4}'), ("StatusCode.INVALID_ARGUMENT", "400"), "may set only version_policy"),
        (lambda c: c.load_model("pair", config='{"version_policy": {"specific": {"versions": [7]}}}'), ("StatusCode.NOT_FOUND", "404"), "no versions ['7']"),
        (lambda c: c.load_model("pair", config="{nope"), ("StatusCode.INVALID_ARGUMENT", "400"), "not valid JSON"),
        # The traffic file sends pair's unpinned requests to version 2: it stays until the file changes.
        (lambda c: c.unload_model("pair"), ("StatusCode.FAILED_PRECONDITION", "400"), "traffic file sends model 'pair'"),
        (lambda c: c.unload_model("nope"), ("StatusCode.NOT_FOUND", "404"), "unknown model 'nope'"),
    ],
)  # fmt: skip
def test_bad_loads_and_unloads_are_refused_alike_on_both_doors(
    client: triton.InferenceServerClient, http: triton_http.InferenceServerClient, call: object, status: tuple[str, str], message: str
) -> None:
    for door, expected in zip((client, http), status):
        with pytest.raises(triton.InferenceServerException) as error:
            call(door)
        assert error.value.status() == expected and message in error.value.message(), error.value
    assert index(client) == {"1": ("READY", ""), "2": ("READY", "")}


def test_unloading_a_model_takes_every_version(client: triton.InferenceServerClient, traffic_file: Path) -> None:
    traffic_file.write_text('{"models": {}}')
    for _ in range(600):  # the router reads the file within a second or so
        try:
            client.unload_model("pair")
            break
        except triton.InferenceServerException as error:
            assert "traffic file" in error.message(), error
            threading.Event().wait(0.1)
    assert index(client) == {"1": ("UNAVAILABLE", "unloaded"), "2": ("UNAVAILABLE", "unloaded")}
    assert not client.is_model_ready("pair")


def test_a_version_that_cannot_start_is_not_loaded(client: triton.InferenceServerClient, store: Path) -> None:
    # A model file ONNX Runtime refuses (an operator of a domain it does not know), added to the store while serving.
    graph = helper.make_graph(
        [helper.make_node("Nope", ["x"], ["y"], domain="quiver.test")], "broken",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("quiver.test", 1)])
    model.ir_version = 8
    path = store / "pair" / "3" / "model.onnx"
    path.parent.mkdir()
    onnx.save(model, str(path))
    signature = from_onnx_file(path).manifest
    variant = signature.variants[0].model_copy(update={"replicas": Replicas(num_cpus=0.25)})
    write_version(store, signature.model_copy(update={"name": "pair", "version": "3", "variants": [variant]}))

    with pytest.raises(triton.InferenceServerException) as error:
        client.load_model("pair", config=json.dumps({"version_policy": {"specific": {"versions": [3]}}}))
    assert error.value.status() == "StatusCode.UNAVAILABLE" and "could not start" in error.value.message(), error.value
    assert index(client)["3"] == ("UNAVAILABLE", "unloaded")
