"""The GRPCInferenceService servicer: thin methods that decode, call the operations and encode.

Tokens, lookup and dispatch are the shared operations' (router/operations.py), shared with the REST
door; here errors become statuses in one place, `_rpc`, so a bad request fails alone and the
server keeps serving.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import NoReturn, TypeVar

import grpc

from quiver._proto import grpc_predict_v2_pb2 as pb
from quiver._proto import grpc_predict_v2_pb2_grpc as pb_grpc

from . import codec, stream, triton_grpc
from .operations import Caller, Operations, InferRequest
from .errors import RouterError, status_of
from .metrics import GRPC

logger = logging.getLogger(__name__)

Request = TypeVar("Request")
Response = TypeVar("Response")
Method = Callable[["InferenceServicer", Request, grpc.aio.ServicerContext], Awaitable[Response]]


def _rpc(method: Method) -> Method:
    @functools.wraps(method)
    async def wrapper(self: InferenceServicer, request: Request, context: grpc.aio.ServicerContext) -> Response:
        try:
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


def _caller(context: grpc.aio.ServicerContext) -> Caller:
    return context.invocation_metadata() or ()


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, operations: Operations) -> None:
        self._operations = operations

    @_rpc
    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self._operations.live())

    @_rpc
    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._operations.ready())

    @_rpc
    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self._operations.model_ready(_caller(context), request.name, request.version))

    @_rpc
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        metadata = self._operations.server_metadata(_caller(context))
        return pb.ServerMetadataResponse(name=metadata.name, version=metadata.version, extensions=metadata.extensions)

    @_rpc
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        metadata = self._operations.model_metadata(_caller(context), request.name, request.version)
        return pb.ModelMetadataResponse(
            name=metadata.name,
            versions=metadata.versions,
            platform=metadata.platform,
            inputs=[codec.tensor_metadata(spec) for spec in metadata.inputs],
            outputs=[codec.tensor_metadata(spec) for spec in metadata.outputs],
        )

    @_rpc
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext) -> pb.ModelConfigResponse:
        return triton_grpc.model_config(self._operations.model_config(_caller(context), request.name, request.version))

    @_rpc
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        return triton_grpc.model_statistics(self._operations.statistics(_caller(context), request.name, request.version))

    @_rpc
    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        async def read() -> InferRequest:
            return codec.infer_request(request, context.time_remaining())

        return codec.infer_response(await self._operations.infer(_caller(context), request.model_name, read, GRPC))

    async def ModelStreamInfer(
        self, requests: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        # Errors are answered per request, in the stream (router/stream.py); only a broken stream ends the call.
        try:
            async for response in stream.answers(self._operations, requests, _caller(context), context.time_remaining):
                yield response
        except Exception:
            logger.exception("ModelStreamInfer failed")
            await context.abort(*status_of(Exception()))

    @_rpc
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        return triton_grpc.repository_index(await self._operations.repository_index(_caller(context), request.ready))

    @_rpc
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        def read() -> dict[str, object]:
            return {key: codec.parameter_value(value) for key, value in request.parameters.items()}

        await self._operations.load_model(_caller(context), request.model_name, read)
        return pb.RepositoryModelLoadResponse()

    @_rpc
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        await self._operations.unload_model(_caller(context), request.model_name)
        return pb.RepositoryModelUnloadResponse()

    @_rpc
    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.SystemSharedMemoryRegisterResponse:
        self._operations.register_region(_caller(context), request.name, lambda: (request.key, request.offset, request.byte_size))
        return pb.SystemSharedMemoryRegisterResponse()

    @_rpc
    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        self._operations.unregister_region(_caller(context), request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    @_rpc
    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.SystemSharedMemoryStatusResponse:
        return triton_grpc.region_status(self._operations.region_status(_caller(context), request.name))

    @_rpc
    async def CudaSharedMemoryRegister(self, request: pb.CudaSharedMemoryRegisterRequest, context: grpc.aio.ServicerContext) -> NoReturn:
        self._operations.register_cuda_region(_caller(context))

    @_rpc
    async def CudaSharedMemoryStatus(
        self, request: pb.CudaSharedMemoryStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.CudaSharedMemoryStatusResponse:
        self._operations.cuda_region_status(_caller(context), request.name)
        return pb.CudaSharedMemoryStatusResponse()

    @_rpc
    async def CudaSharedMemoryUnregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest, context: grpc.aio.ServicerContext
    ) -> pb.CudaSharedMemoryUnregisterResponse:
        self._operations.unregister_cuda_region(_caller(context), request.name)
        return pb.CudaSharedMemoryUnregisterResponse()
