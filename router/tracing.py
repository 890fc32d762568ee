"""OpenTelemetry traces of the router: one span per request, one child span per call to a replica.

Off by default. `--otel-endpoint URL` (or the standard `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` /
`OTEL_EXPORTER_OTLP_ENDPOINT`, or `OTEL_TRACES_EXPORTER=otlp|console`) turns it on; the SDK
reads its other standard variables itself (`OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`,
`OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_HEADERS`...). `OTEL_SDK_DISABLED=true` wins over everything.

- `ModelInfer` (SERVER span, `inference.GRPCInferenceService/ModelInfer`): continues the
  client's trace when the request carries W3C `traceparent` metadata; attributes: the model,
  the version and variant that served it, pool, routing reason, request id, gRPC status.
- `POST /v2/models/{model}/infer` (SERVER span): the same for a REST request, with the HTTP
  status instead of the gRPC one.
- `quiver.replica.infer` (CLIENT span) under it for each call dispatch makes to a replica (two
  when the first is retried elsewhere), with the variant called, why, and the call's status.

When tracing is off nothing here is installed: the servicer method is not wrapped and dispatch
has no watcher for it, so the request path does not pay for it. When on, spans end on the
request's own task and go out through a BatchSpanProcessor (off the request path).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from .logcontext import REQUEST_ID
from .routes import VariantRoute

logger = logging.getLogger(__name__)

INFER_SPAN = "inference.GRPCInferenceService/ModelInfer"
HTTP_INFER_SPAN = "POST /v2/models/{model}/infer"
CALL_SPAN = "quiver.replica.infer"


@dataclass(frozen=True)
class TracingSettings:
    exporter: str = "none"  # "otlp", "console" or "none"
    endpoint: str | None = None  # OTLP/gRPC, e.g. http://collector:4317; None: the SDK's default

    @property
    def enabled(self) -> bool:
        return self.exporter != "none"

    @classmethod
    def from_environment(cls, endpoint: str | None, environ: Mapping[str, str]) -> TracingSettings:
        """The flag first, then the standard OTEL_ variables; read once, in main."""
        if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return cls()
        endpoint = endpoint or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() or ("otlp" if endpoint else "none")
        if exporter not in ("otlp", "console", "none"):
            logger.warning("OTEL_TRACES_EXPORTER=%r: the router exports with otlp, console or none; tracing stays off", exporter)
            return cls()
        return cls(exporter, endpoint)


def provider_for(settings: TracingSettings) -> Any:
    """A TracerProvider exporting as `settings` say (the caller shuts it down), or None when off."""
    if not settings.enabled:
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    if settings.exporter == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=settings.endpoint) if settings.endpoint else OTLPSpanExporter()
    # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES, when set, win over this default.
    provider = TracerProvider(resource=Resource.create({"service.name": "quiver-router"}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    logger.info("tracing: %s exporter%s", settings.exporter, f" to {settings.endpoint}" if settings.endpoint else "")
    return provider


class Tracing:
    """Spans of one router, from a TracerProvider (the SDK's, or a test's with an in-memory exporter)."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._trace = trace
        self._provider = provider
        self._tracer = provider.get_tracer("quiver.router")
        self._propagator = TraceContextTextMapPropagator()

    def infer(self, method: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]) -> Callable:
        """`method` (the servicer's bound ModelInfer) inside a SERVER span."""
        kind, status = self._trace.SpanKind.SERVER, self._trace.Status
        error = self._trace.StatusCode.ERROR

        @functools.wraps(method)
        async def traced(request: Any, context: grpc.aio.ServicerContext) -> Any:
            carrier = {key: value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)}
            attributes = {"rpc.system": "grpc", "rpc.service": "inference.GRPCInferenceService", "rpc.method": "ModelInfer",
                          "quiver.model": request.model_name}
            if request.model_version:
                attributes["quiver.version"] = request.model_version
            with self._tracer.start_as_current_span(
                INFER_SPAN, context=self._propagator.extract(carrier), kind=kind, attributes=attributes,
                record_exception=False, set_status_on_exception=False,
            ) as span:
                try:
                    response = await method(request, context)
                except BaseException as exc:
                    code = context.code() if callable(getattr(context, "code", None)) else None
                    if not isinstance(code, grpc.StatusCode):  # not aborted with a status: the client went away, or a bug
                        code = grpc.StatusCode.CANCELLED if isinstance(exc, asyncio.CancelledError) else grpc.StatusCode.UNKNOWN
                    span.set_attributes({"quiver.request_id": REQUEST_ID.get(), "rpc.grpc.status_code": code.value[0]})
                    span.set_status(status(error, code.name))
                    raise
                parameters = response.parameters
                span.set_attributes({
                    "quiver.request_id": REQUEST_ID.get(),
                    "quiver.version": response.model_version,
                    "quiver.variant": parameters["quiver.variant"].string_param,
                    "quiver.pool": parameters["quiver.pool"].string_param,
                    "quiver.reason": parameters["quiver.reason"].string_param,
                    "rpc.grpc.status_code": grpc.StatusCode.OK.value[0],
                })
                return response

        return traced

    def http_infer(self, infer: Callable[..., Awaitable[Any]], status_of: Callable[[BaseException], int]) -> Callable:
        """`infer` (Operations.infer, as the REST door calls it) inside a SERVER span; `status_of`
        is the door's HTTP status of an error."""
        kind, status = self._trace.SpanKind.SERVER, self._trace.Status
        error = self._trace.StatusCode.ERROR

        @functools.wraps(infer)
        async def traced(caller: Any, model: str, read: Any, protocol: str) -> Any:
            carrier = {key: value for key, value in caller if isinstance(value, str)}
            with self._tracer.start_as_current_span(
                HTTP_INFER_SPAN, context=self._propagator.extract(carrier), kind=kind,
                attributes={"http.request.method": "POST", "quiver.model": model},
                record_exception=False, set_status_on_exception=False,
            ) as span:
                try:
                    answer = await infer(caller, model, read, protocol)
                except BaseException as exc:
                    code = 499 if isinstance(exc, asyncio.CancelledError) else status_of(exc)  # 499: the client went away
                    span.set_attributes({"quiver.request_id": REQUEST_ID.get(), "http.response.status_code": code})
                    span.set_status(status(error, str(code)))
                    raise
                span.set_attributes({
                    "quiver.request_id": REQUEST_ID.get(),
                    **{key: answer.parameters[key] for key in ("quiver.version", "quiver.variant", "quiver.pool", "quiver.reason")},
                    "http.response.status_code": 200,
                })
                return answer

        return traced

    # A CallWatcher (router/calls.py): one CLIENT span per call to a replica, under the request's span.
    def started(self, route: VariantRoute, response: object, reason: str) -> object:
        return self._tracer.start_span(CALL_SPAN, kind=self._trace.SpanKind.CLIENT, attributes={
            "quiver.model": route.manifest.name,
            "quiver.version": route.manifest.version,
            "quiver.variant": route.variant.name,
            "quiver.pool": route.variant.pool,
            "quiver.reason": reason,
            "quiver.request_id": REQUEST_ID.get(),
        })

    def finished(self, token: object, code: grpc.StatusCode) -> None:
        token.set_attribute("rpc.grpc.status_code", code.value[0])
        if code is not grpc.StatusCode.OK:
            token.set_status(self._trace.Status(self._trace.StatusCode.ERROR, code.name))
        token.end()

    def shutdown(self) -> None:
        """Send what is buffered and stop the exporter (on the router's stop)."""
        shutdown = getattr(self._provider, "shutdown", None)
        if shutdown is not None:
            shutdown()
