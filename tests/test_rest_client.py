"""tritonclient.http, unmodified, against the REST door and the real protocol operations, in process.

The replicas are replaced by ONNX Runtime called directly (a dispatcher with the real one's
`infer`), so the wire format — JSON tensors, Triton's binary tensor extension, metadata,
configuration, statistics — is checked in seconds, without Ray; tests/test_rest.py runs the
same client against `quiver serve`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from quiver.router.auth import Authenticator
from quiver.router.dispatch import Served
from quiver.router.metrics import RouterMetrics
from quiver.router.operations import Operations
from quiver.router.repository import ON_CLUSTER, Repository
from quiver.router.rest import RestServer
from quiver.router.routes import RouteTable, VariantRoute, VersionRoutes
from quiver.router.tracing import HTTP_INFER_SPAN, Tracing
from quiver.router.traffic import Traffic
from quiver.serving import InferenceResult, ModelVersion, build_example, from_onnx_file

from .models import PAIR_TABLE, build_pair, reference


class AllReady:
    def version_ready(self, version: VersionRoutes) -> bool:
        return True

    def ready(self, route: VariantRoute) -> bool:
        return True


class OnnxRuntimeDispatcher:
    """Dispatcher.infer's contract, answered by ONNX Runtime on the default variant's file."""

    async def infer(self, version: VersionRoutes, hints: object, inputs: dict[str, np.ndarray], deadline_s: float | None) -> Served:
        route = next(iter(version.variants.values()))
        outputs = reference(route.version.directory / route.variant.file, inputs)
        return Served(InferenceResult(outputs, 1, len(next(iter(inputs.values())))), route, "default")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rest-client")
    return {"example": build_example(root / "example.onnx"), "pair": build_pair(root / "pair.onnx")}


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
def client(models: dict[str, Path], spans: InMemorySpanExporter) -> Iterator[triton.InferenceServerClient]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    routes = []
    for name, path in models.items():
        manifest = from_onnx_file(path).manifest.model_copy(update={"name": name, "version": "1"})
        manifest = manifest.model_copy(update={"variants": [manifest.variants[0].model_copy(update={"file": path.name})]})
        version = ModelVersion(manifest, path.parent)
        routes.append(VariantRoute(version, manifest.variants[0], handle=None))
    table = RouteTable(routes)
    # The door of a cluster's router, whose deployments are the operator's.
    repository = Repository(table, AllReady(), ON_CLUSTER)  # type: ignore[arg-type]
    operations = Operations(
        table, Authenticator(None), Traffic(table.models()), AllReady(), OnnxRuntimeDispatcher(), RouterMetrics(), 1 << 20,  # type: ignore[arg-type]
        repository=repository,
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="rest-door", daemon=True)
    thread.start()
    server = RestServer(operations, "127.0.0.1", 0, 2 << 20, 1.0, None, Tracing(provider))
    port = asyncio.run_coroutine_threadsafe(server.start(), loop).result(30)
    try:
        yield triton.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=30)
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_on_a_cluster_the_index_lists_what_is_served_and_loading_is_the_operators(client: triton.InferenceServerClient) -> None:
    assert client.get_model_repository_index() == [
        {"name": "example", "version": "1", "state": "READY", "reason": ""},
        {"name": "pair", "version": "1", "state": "READY", "reason": ""},
    ]
    for call in (lambda: client.load_model("pair"), lambda: client.unload_model("pair")):
        with pytest.raises(triton.InferenceServerException) as error:
            call()
        assert error.value.status() == "400" and "the operator owns deployments" in error.value.message()
    tensor = triton.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 64), np.float32))
    assert client.infer("example", [tensor]).as_numpy("output").shape == (1, 10)  # still serving


def test_probes_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("pair") and client.is_model_ready("pair", "1") and not client.is_model_ready("nope")
    assert client.get_server_metadata()["extensions"] == ["model_configuration", "statistics", "system_shared_memory", "schedule_policy", "binary_tensor_data"]
    assert client.get_model_metadata("pair")["inputs"] == [
        {"name": "x", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "k", "datatype": "INT64", "shape": [-1, 2]},
    ]
    config = client.get_model_config("pair", "1")
    assert (config["name"], config["platform"], config["backend"]) == ("pair", "onnxruntime_onnx", "onnxruntime")
    assert config["input"][1] == {"name": "k", "data_type": "TYPE_INT64", "dims": [2]} and config["max_batch_size"] > 0


@pytest.mark.parametrize("binary_in", [False, True], ids=["json-in", "binary-in"])
@pytest.mark.parametrize("binary_out", [False, True, None], ids=["json-out", "binary-out", "default-out"])
def test_infer_matches_onnxruntime(
    client: triton.InferenceServerClient, models: dict[str, Path], binary_in: bool, binary_out: bool | None
) -> None:
    feeds = {"x": np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3), "k": np.arange(8, dtype=np.int64).reshape(4, 2) % len(PAIR_TABLE)}
    tensors = []
    for name, datatype in (("x", "FP32"), ("k", "INT64")):
        tensors.append(triton.InferInput(name, list(feeds[name].shape), datatype))
        tensors[-1].set_data_from_numpy(feeds[name], binary_data=binary_in)
    # None: no outputs named, so tritonclient asks for every output as binary (`binary_data_output`).
    outputs = None if binary_out is None else [triton.InferRequestedOutput(n, binary_data=binary_out) for n in ("looked_up", "total")]
    result = client.infer("pair", tensors, outputs=outputs, request_id="abc", parameters={"quiver.priority": 1})
    expected = reference(models["pair"], feeds)
    np.testing.assert_array_equal(result.as_numpy("looked_up"), expected["looked_up"])
    np.testing.assert_array_equal(result.as_numpy("total"), expected["total"])
    response = result.get_response()
    assert response["id"] == "abc" and response["parameters"]["quiver.reason"] == "default"
    names = [output["name"] for output in response["outputs"]]
    assert names == (["total", "looked_up"] if binary_out is None else ["looked_up", "total"])
    assert all(("parameters" in output) == (binary_out is not False) for output in response["outputs"])


def test_errors_and_statistics(client: triton.InferenceServerClient) -> None:
    tensor = triton.InferInput("input", [1, 63], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 63), np.float32))
    with pytest.raises(triton.InferenceServerException) as error:
        client.infer("example", [tensor])
    assert error.value.status() == "400" and "shape [1, 63] does not match the model's [-1, 64]" in error.value.message()
    with pytest.raises(triton.InferenceServerException) as error:
        client.get_model_metadata("example", "7")
    assert error.value.status() == "404"
    stats = client.get_inference_statistics("example")["model_stats"]
    assert [(s["name"], s["version"]) for s in stats] == [("example", "1")]
    assert {(s["name"], s["version"]) for s in client.get_inference_statistics()["model_stats"]} == {("example", "1"), ("pair", "1")}


def test_infer_spans_continue_the_clients_trace(client: triton.InferenceServerClient, spans: InMemorySpanExporter) -> None:
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    tensor = triton.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 64), np.float32))
    spans.clear()
    client.infer("example", [tensor], request_id="traced-1", headers={"traceparent": f"00-{trace_id}-{parent_id}-01"})
    with pytest.raises(triton.InferenceServerException):
        client.infer("nope", [tensor], request_id="traced-2")
    served, refused = spans.get_finished_spans()
    assert served.name == refused.name == HTTP_INFER_SPAN and served.kind is SpanKind.SERVER
    assert format(served.context.trace_id, "032x") == trace_id and format(served.parent.span_id, "016x") == parent_id
    assert {key: served.attributes[key] for key in ("quiver.model", "quiver.version", "quiver.request_id", "http.response.status_code")} == {
        "quiver.model": "example", "quiver.version": "1", "quiver.request_id": "traced-1", "http.response.status_code": 200,
    }
    assert served.attributes["quiver.reason"] == "default" and served.attributes["quiver.variant"]
    assert refused.attributes["http.response.status_code"] == 404 and not refused.status.is_ok
