"""ModelStreamInfer, Triton's bidirectional stream: many inference requests on one call.

Each request of the stream is served as ModelInfer serves it (router/operations.py), and each is
answered, in the order the requests came: a request that fails answers with its error in the
response's `error_message` (and its model, version and id, so a client can tell which), and the
stream goes on. Requests are served concurrently, up to `WINDOW` ahead of the answer the stream
waits to send; beyond that the stream stops reading, and gRPC's flow control holds the client.
The call's deadline, if any, bounds every request on it; each may set a tighter one with
Triton's `timeout` parameter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

from quiver._proto import grpc_predict_v2_pb2 as pb

from . import codec
from .errors import RouterError, status_of
from .metrics import GRPC
from .operations import Caller, InferRequest, Operations

logger = logging.getLogger(__name__)

WINDOW = 64  # requests served ahead of the oldest unanswered one


async def answers(
    operations: Operations,
    requests: AsyncIterator[pb.ModelInferRequest],
    caller: Caller,
    time_remaining: Callable[[], float | None],
) -> AsyncIterator[pb.ModelStreamInferResponse]:
    """One answer per request, in order; ends when the client closes its side and every request is answered."""
    pending: asyncio.Queue[asyncio.Task | None] = asyncio.Queue(WINDOW)

    async def read() -> None:
        try:
            async for request in requests:
                await pending.put(asyncio.create_task(_answer(operations, request, caller, time_remaining()), name="quiver-stream-request"))
        finally:
            await pending.put(None)

    reader = asyncio.create_task(read(), name="quiver-stream-reader")
    try:
        while (task := await pending.get()) is not None:
            yield await task
        await reader  # the client's side ended: raises what reading raised, if anything
    finally:
        reader.cancel()
        while not pending.empty():
            if (task := pending.get_nowait()) is not None:
                task.cancel()


async def _answer(
    operations: Operations, request: pb.ModelInferRequest, caller: Caller, time_remaining_s: float | None
) -> pb.ModelStreamInferResponse:
    async def read() -> InferRequest:
        return codec.infer_request(request, time_remaining_s)

    try:
        answer = await operations.infer(caller, request.model_name, read, GRPC)
    except Exception as exc:  # noqa: BLE001 - answered in the stream; the stream goes on
        if not isinstance(exc, RouterError):
            logger.exception("a streamed request failed")  # the record carries the request id
        failed = pb.ModelInferResponse(model_name=request.model_name, model_version=request.model_version, id=request.id)
        return pb.ModelStreamInferResponse(error_message=status_of(exc)[1], infer_response=failed)
    return pb.ModelStreamInferResponse(infer_response=codec.infer_response(answer))
