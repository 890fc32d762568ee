"""The GRPCInferenceService servicer: thin methods that decode, validate, dispatch and encode.

All policy lives elsewhere (routes, codec, dispatch); tokens are checked and errors become
statuses in one place, `_rpc`, so a bad request fails alone and the server keeps serving.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from quiver import __version__
from quiver._proto import grpc_predict_v2_pb2 as pb
from quiver._proto import grpc_predict_v2_pb2_grpc as pb_grpc

from . import codec, health, modelconfig, triton_grpc
from .auth import Authenticator
from .dispatch import Dispatcher
from .errors import DeadlineExceeded, NotFound, RouterError, Unavailable, status_of
from .hints import RoutingHints
from .logcontext import begin_request
from .metrics import RouterMetrics
from .readiness import Readiness
from .routes import RouteTable
from .traffic import Traffic

logger = logging.getLogger(__name__)

Request = TypeVar("Request")
Response = TypeVar("Response")
Method = Callable[["InferenceServicer", Request, grpc.aio.ServicerContext], Awaitable[Response]]

# Who may call a method: anyone (probes), any valid token, or a token scoped to the request's model.
OPEN, ANY_MODEL = "open", "any-model"
Scope = str | Callable[[Any], str]


def _rpc(scope: Scope) -> Callable[[Method], Method]:
    def decorate(method: Method) -> Method:
        @functools.wraps(method)
        async def wrapper(self: InferenceServicer, request: Request, context: grpc.aio.ServicerContext) -> Response:
            try:
                if scope != OPEN:
                    self._auth.check(context.invocation_metadata() or (), None if scope == ANY_MODEL else scope(request))
                return await method(self, request, context)
            except RouterError as exc:
                code, message = status_of(exc)
                if exc.retry_after_ms is not None:
                    context.set_trailing_metadata((("grpc-retry-pushback-ms", str(exc.retry_after_ms)),))
            except Exception:
                logger.exception("%s failed", method.__name__)  # the record carries the request id
                code, message = status_of(Exception())
            await context.abort(code, message)

        return wrapper

    return decorate


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        routes: RouteTable,
        auth: Authenticator,
        traffic: Traffic,
        readiness: Readiness,
        dispatcher: Dispatcher,
        metrics: RouterMetrics,
        max_request_bytes: int,
    ) -> None:
        self._routes = routes
        self._auth = auth
        self._traffic = traffic
        self._readiness = readiness
        self._dispatcher = dispatcher
        self._metrics = metrics
        self._max_request_bytes = max_request_bytes

    @_rpc(OPEN)
    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @_rpc(OPEN)
    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        # Ready when every model version has a variant that can answer.
        versions = [self._routes.lookup(model, v) for model, vs in self._routes.models().items() for v in vs]
        return pb.ServerReadyResponse(ready=bool(versions) and all(map(self._readiness.version_ready, versions)))

    @_rpc(lambda request: request.name)
    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        # An unknown model is simply not ready (as Triton answers), so probes need no special case.
        try:
            version = self._routes.lookup(request.name, request.version)
        except NotFound:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self._readiness.version_ready(version))

    @_rpc(ANY_MODEL)
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="quiver", version=__version__, extensions=triton_grpc.EXTENSIONS)

    @_rpc(lambda request: request.name)
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        manifest = self._routes.lookup(request.name, request.version).manifest
        return pb.ModelMetadataResponse(
            name=manifest.name,
            versions=self._routes.models()[manifest.name],
            platform=manifest.platform,
            inputs=[codec.tensor_metadata(spec) for spec in manifest.inputs],
            outputs=[codec.tensor_metadata(spec) for spec in manifest.outputs],
        )

    @_rpc(lambda request: request.name)
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext) -> pb.ModelConfigResponse:
        manifest = self._routes.lookup(request.name, request.version).manifest
        return triton_grpc.model_config(modelconfig.describe(manifest))

    # Empty name: every model (a token scoped to some models may not ask for that); empty version: every version.
    @_rpc(lambda request: request.name)
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        if request.name:
            self._routes.lookup(request.name, request.version)  # NOT_FOUND for a model or version not served
        return triton_grpc.model_statistics(self._metrics.statistics.served(self._routes.models(), request.name, request.version))

    @_rpc(lambda request: request.model_name)
    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        begin_request(request.id)
        try:
            chosen = request.model_version or self._traffic.pick(request.model_name)
            version = self._routes.lookup(request.model_name, chosen)
            parameters = {key: codec.parameter_value(value) for key, value in request.parameters.items()}
            remaining_s = context.time_remaining()
            if remaining_s is not None and remaining_s <= 0:
                raise DeadlineExceeded("the deadline passed before the request was read")
            hints = RoutingHints.from_parameters(parameters, None if remaining_s is None else 1000 * remaining_s)
            inputs = codec.decode_inputs(request, version.manifest, self._max_request_bytes)
            names = codec.requested_outputs(request, version.manifest)
        except RouterError as exc:
            self._metrics.rejected.labels(request.model_name, exc.code.name).inc()
            raise
        try:
            served = await self._dispatcher.infer(version, hints, inputs, remaining_s)
        except Unavailable as exc:  # say why: a pool without nodes, replicas that stopped answering
            raise health.explained(exc, self._readiness, version) from exc
        return codec.encode_response(
            request,
            version.manifest,
            served.result.outputs,
            names,
            {
                "quiver.variant": served.route.variant.name,
                "quiver.version": version.manifest.version,
                "quiver.pool": served.route.variant.pool,
                "quiver.reason": served.reason,
                "quiver.batch_requests": served.result.batch_requests,
                "quiver.batch_rows": served.result.batch_rows,
            },
        )
