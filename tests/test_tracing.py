"""OpenTelemetry spans of the router: a SERVER span per request, a CLIENT span per call to a replica.

- In memory: the real Dispatcher, ProbedReadiness and Tracing over fake Serve handles (variant
  `a` stops answering, its call is cancelled by the router's probes and retried on `b`), spans
  caught by the SDK's InMemorySpanExporter: the tree and its attributes.
- End to end: `quiver serve --otel-endpoint` exports over OTLP/gRPC to a collector stub in this
  process; a request carrying W3C `traceparent` continues the client's trace.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import tritonclient.grpc as triton
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from ray.serve import exceptions as serve_errors

from quiver.router.dispatch import Dispatcher
from quiver.router.health import ProbedReadiness
from quiver.router.hints import RoutingHints
from quiver.router.logcontext import begin_request
from quiver.router.metrics import RouterMetrics
from quiver.router.routes import RouteTable, VariantRoute
from quiver.router.tracing import CALL_SPAN, INFER_SPAN, Tracing, TracingSettings
from quiver.serving import AppState, InferenceResult, Manifest, ModelVersion, app_name

from .serverproc import quiver_serve

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


class FakeResponse:
    """A Serve DeploymentResponse: awaitable, cancellable (awaiting it then raises RequestCancelledError)."""

    def __init__(self, result: object | None) -> None:
        self._future = asyncio.get_running_loop().create_future()
        if result is not None:
            self._future.set_result(result)

    def __await__(self):
        return self._future.__await__()

    def cancel(self) -> None:
        if not self._future.done():
            self._future.set_exception(serve_errors.RequestCancelledError())


class FakeHandle:
    """`answering=False`: calls and probes wait forever, as on a crashed node."""

    def __init__(self, answering: bool) -> None:
        self.answering = answering
        self.calls = 0  # infer_many calls made
        result = InferenceResult({"y": np.zeros((1, 1), np.float32)}, batch_requests=1, batch_rows=1)
        self._methods = {"infer_many": SimpleNamespace(remote=self._infer_many(result))}
        self.ready = SimpleNamespace(remote=lambda: FakeResponse(True if self.answering else None))

    def options(self, method_name: str) -> SimpleNamespace:
        return self._methods[method_name]

    def _infer_many(self, result: InferenceResult) -> Callable[[list], FakeResponse]:
        def remote(requests: list) -> FakeResponse:
            self.calls += 1
            return FakeResponse([result] * len(requests) if self.answering else None)

        return remote


def test_spans_tree_and_attributes_in_memory_with_a_retry_after_a_variant_is_lost() -> None:
    manifest = Manifest.model_validate({
        "name": "m", "version": "3", "default_variant": "a",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 1]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}],
        "variants": [{"name": name, "file": "m.onnx", "sha256": "0" * 64, "pool": name + "-pool"} for name in ("a", "b")],
    })
    version = ModelVersion(manifest, Path("."))
    handles = {"a": FakeHandle(answering=True), "b": FakeHandle(answering=True)}
    routes = RouteTable(VariantRoute(version, variant, handles[variant.name]) for variant in manifest.variants)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(provider)

    async def scenario() -> object:
        readiness = ProbedReadiness(
            routes, poll=lambda: {app_name(version, v): AppState("RUNNING", 1) for v in manifest.variants}, probe_timeout_s=0.05
        )
        await readiness.refresh()
        reachability = readiness.reachability
        await reachability.probe_all()  # both answer once
        dispatcher = Dispatcher(RouterMetrics(), readiness, watchers=[reachability, tracing])

        async def model_infer(request: SimpleNamespace, context: object) -> SimpleNamespace:
            """What the servicer does around dispatch, less the protocol."""
            begin_request(request.id)
            served = await dispatcher.infer(routes.lookup("m"), RoutingHints(), {"x": np.zeros((1, 1), np.float32)})
            parameters = {key: SimpleNamespace(string_param=value) for key, value in (
                ("quiver.variant", served.route.variant.name), ("quiver.pool", served.route.variant.pool), ("quiver.reason", served.reason))}
            return SimpleNamespace(model_version=served.route.manifest.version, parameters=parameters)

        context = SimpleNamespace(invocation_metadata=lambda: (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),))
        handles["a"].answering = False  # the node of variant a is gone: its calls and probes hang
        request = asyncio.create_task(tracing.infer(model_infer)(SimpleNamespace(id="req-7", model_name="m", model_version=""), context))

        async def calling_a() -> None:
            while handles["a"].calls == 0:
                await asyncio.sleep(0.001)

        await asyncio.wait_for(calling_a(), 30)  # the request waits on a's call
        for _ in range(2):  # two missed probes: a is lost, the call waiting on it cancelled, retried on b
            await reachability.probe_all()
        return await asyncio.wait_for(request, 30)

    response = asyncio.run(scenario())
    assert response.parameters["quiver.variant"].string_param == "b"

    spans = exporter.get_finished_spans()
    (server,) = [s for s in spans if s.name == INFER_SPAN]
    calls = sorted((s for s in spans if s.name == CALL_SPAN), key=lambda s: s.start_time)
    assert server.kind is SpanKind.SERVER and format(server.context.trace_id, "032x") == TRACE_ID
    assert format(server.parent.span_id, "016x") == PARENT_ID  # the client's trace goes on
    assert server.attributes["quiver.model"] == "m" and server.attributes["quiver.version"] == "3"
    assert server.attributes["quiver.variant"] == "b" and server.attributes["quiver.pool"] == "b-pool"
    assert server.attributes["quiver.reason"] == "retry" and server.attributes["quiver.request_id"] == "req-7"
    assert server.attributes["rpc.grpc.status_code"] == 0
    assert [c.attributes["quiver.variant"] for c in calls] == ["a", "b"]
    for call in calls:
        assert call.kind is SpanKind.CLIENT and call.parent.span_id == server.context.span_id
        assert call.context.trace_id == server.context.trace_id
        assert call.attributes["quiver.model"] == "m" and call.attributes["quiver.version"] == "3"
        assert call.attributes["quiver.request_id"] == "req-7"
    assert calls[0].attributes["quiver.reason"] == "default" and calls[0].status.status_code is StatusCode.ERROR
    assert calls[0].attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    assert calls[1].attributes["quiver.reason"] == "retry" and calls[1].attributes["rpc.grpc.status_code"] == 0


def test_tracing_settings_come_from_the_flag_or_the_standard_variables() -> None:
    assert not TracingSettings.from_environment(None, {}).enabled  # off by default
    assert TracingSettings.from_environment("http://c:4317", {}) == TracingSettings("otlp", "http://c:4317")
    assert TracingSettings.from_environment(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}).exporter == "otlp"
    assert TracingSettings.from_environment(None, {"OTEL_TRACES_EXPORTER": "console"}).exporter == "console"
    assert not TracingSettings.from_environment("http://c:4317", {"OTEL_SDK_DISABLED": "true"}).enabled
    assert not TracingSettings.from_environment(None, {"OTEL_TRACES_EXPORTER": "zipkin"}).enabled


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace collector that keeps what it is sent."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict, object]] = []  # (resource attributes, span)
        self.lock = threading.Lock()

    def Export(self, request, context):  # noqa: N802 - the protocol's name
        with self.lock:
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    self.spans.extend((resource, span) for span in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def attributes(span) -> dict:
    return {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in span.attributes}


def test_quiver_serve_exports_spans_over_otlp_and_continues_the_clients_trace() -> None:
    collector = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with quiver_serve("--otel-endpoint", f"http://127.0.0.1:{port}") as router:
            client = triton.InferenceServerClient(router.address)
            tensor = triton.InferInput("input", [1, 64], "FP32")
            tensor.set_data_from_numpy(np.ones((1, 64), np.float32))
            client.infer("example", [tensor], request_id="traced-1", headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
            wrong = triton.InferInput("nope", [1, 64], "FP32")
            wrong.set_data_from_numpy(np.ones((1, 64), np.float32))
            try:
                client.infer("example", [wrong], request_id="traced-2")
            except triton.InferenceServerException as exc:
                assert exc.status() == "StatusCode.INVALID_ARGUMENT"
        # The router's exit flushed its spans.
        deadline = time.monotonic() + 60
        while len(collector.spans) < 3:
            assert time.monotonic() < deadline, f"{len(collector.spans)} of 3 spans within 60 s:\n{router.own_log()[-3000:]}"
            time.sleep(0.1)
    finally:
        server.stop(None)

    by_id = {attributes(span).get("quiver.request_id"): [] for _, span in collector.spans}
    for _, span in collector.spans:
        by_id[attributes(span).get("quiver.request_id")].append(span)
    assert {resource.get("service.name") for resource, _ in collector.spans} == {"quiver-router"}
    (served, call) = sorted(by_id["traced-1"], key=lambda s: s.kind)  # SERVER (2) before CLIENT (3)
    assert served.name == INFER_SPAN and call.name == CALL_SPAN
    assert served.trace_id.hex() == TRACE_ID and served.parent_span_id.hex() == PARENT_ID
    assert call.trace_id == served.trace_id and call.parent_span_id == served.span_id
    for span in (served, call):
        assert {k: attributes(span)[k] for k in ("quiver.model", "quiver.version", "quiver.variant", "quiver.request_id")} == {
            "quiver.model": "example", "quiver.version": "1", "quiver.variant": "fp32", "quiver.request_id": "traced-1"}
    (refused,) = by_id["traced-2"]  # refused before dispatch: no call to a replica
    assert refused.name == INFER_SPAN and attributes(refused)["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert refused.status.code == refused.status.STATUS_CODE_ERROR
