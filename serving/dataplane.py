"""The replica data plane: a router hands a replica the requests it coalesced, straight over gRPC.

Serve keeps what it is there for: placing replicas on their pool's nodes, replacing them,
scaling them. Requests skip its per-call path (the handle's router thread, Ray's task
submission, the replica's request wrapper), which was most of the router's CPU per call and
~4 ms of a request's latency at one in flight. Each replica serves
`quiver.replica.Replica/InferMany` (protos/quiver_replica.proto) on its node's address, at a
port the OS picks, and registers it in the replica directory (serving/directory.py) with a
secret of its own that every call must carry: only who can read the directory, that is who
can reach Ray, can call a replica. The traffic is plaintext, as Ray's own is between nodes.

`DataPlane` runs in the replica, on its event loop; `DataPlaneClient` is a router's
persistent channel to one replica. The protocol's encoding lives here only, both ends of it.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable, Sequence

import grpc
import numpy as np

from quiver._proto import quiver_replica_pb2 as pb
from quiver._proto import quiver_replica_pb2_grpc as pb_grpc

from .datatypes import Datatype
from .directory import Endpoint, Registration
from .requests import DeadlinePassed, InferenceError, InferenceRequest, InferenceResult, Tensors

logger = logging.getLogger(__name__)

InferMany = Callable[[list[InferenceRequest]], Awaitable[list[InferenceResult | Exception]]]

TOKEN_HEADER = "quiver-replica-token"
# Both ends ping every 10 s when idle, so a replica whose node vanished without closing its
# connections is noticed within ~15 s even between calls.
_KEEPALIVE = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
_UNLIMITED = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


class ReplicaUnreachable(ConnectionError):
    """The call did not get an answer from the replica (gone, restarting, or refusing the caller)."""


class DataPlaneServer:
    """The gRPC server of a replica's data plane, admitting only callers with its secret."""

    def __init__(self, infer_many: InferMany) -> None:
        self.token = secrets.token_urlsafe(32)
        self._server = grpc.aio.server(
            # The server's own floor on ping intervals is 5 min: routers pinging every 10 s would be sent away.
            options=[*_KEEPALIVE, *_UNLIMITED, ("grpc.so_reuseport", 0), ("grpc.http2.min_ping_interval_without_data_ms", 5_000)]
        )
        pb_grpc.add_ReplicaServicer_to_server(_Servicer(infer_many, self.token), self._server)
        self._started = False

    async def start(self, host: str) -> str:
        """Listen on `host` at a port the OS picks; returns HOST:PORT. Runs on the loop that serves."""
        port = self._server.add_insecure_port(f"{host}:0")
        await self._server.start()
        self._started = True
        return f"{host}:{port}"

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls; those in flight get `grace_s` to finish."""
        if self._started:
            await self._server.stop(grace_s)


class DataPlane:
    """A replica's data plane server and its entry in the replica directory."""

    def __init__(self, infer_many: InferMany, app: str, drain_s: float = 1.0, grace_s: float = 10.0) -> None:
        self._server = DataPlaneServer(infer_many)
        self._app = app
        # After leaving the directory, routers get word within a round trip; calls already on
        # their way still arrive for this long, then those in flight get `grace_s` to finish.
        self._drain_s = drain_s
        self._grace_s = grace_s
        self._registration: Registration | None = None

    async def open(self, host: str) -> Endpoint:
        """Listen on `host` (the node's address) and register; runs on the replica's event loop."""
        address = await self._server.start(host)
        endpoint = Endpoint(self._app, uuid.uuid4().hex, address, self._server.token)
        self._registration = Registration(endpoint)
        await self._registration.start()
        return endpoint

    async def close(self) -> None:
        if self._registration is not None:
            await self._registration.stop()
            await asyncio.sleep(self._drain_s)
        await self._server.stop(self._grace_s)


class _Servicer(pb_grpc.ReplicaServicer):
    def __init__(self, infer_many: InferMany, token: str) -> None:
        self._infer_many = infer_many
        self._token = token.encode()

    async def InferMany(self, request: pb.InferManyRequest, context: grpc.aio.ServicerContext) -> pb.InferManyResponse:
        presented = dict(context.invocation_metadata() or ()).get(TOKEN_HEADER, "")
        if not hmac.compare_digest(presented.encode(), self._token):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown caller")
        try:
            requests = [decode_request(message) for message in request.requests]
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return encode_results(await self._infer_many(requests))


class DataPlaneClient:
    """A router's channel to one replica's data plane, kept open between calls."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._channel = grpc.aio.insecure_channel(endpoint.address, options=[*_KEEPALIVE, *_UNLIMITED])
        self._infer_many = self._channel.unary_unary(
            "/quiver.replica.Replica/InferMany",
            request_serializer=pb.InferManyRequest.SerializeToString,
            response_deserializer=pb.InferManyResponse.FromString,
        )
        self._metadata = ((TOKEN_HEADER, endpoint.token),)

    async def infer_many(self, requests: Sequence[InferenceRequest]) -> list[InferenceResult | Exception]:
        """One answer per request, in order; `ReplicaUnreachable` if the call itself failed."""
        try:
            response = await self._infer_many(encode_requests(requests), metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise ReplicaUnreachable(f"replica at {self.endpoint.address}: {exc.code().name} {exc.details()}") from exc
        if len(response.results) != len(requests):
            raise ReplicaUnreachable(f"replica at {self.endpoint.address}: {len(response.results)} answers to {len(requests)} requests")
        return [decode_result(result) for result in response.results]

    async def close(self, grace_s: float | None = None) -> None:
        await self._channel.close(grace_s)


def encode_requests(requests: Sequence[InferenceRequest]) -> pb.InferManyRequest:
    return pb.InferManyRequest(
        requests=[pb.Request(inputs=_tensors(request.inputs), deadline=request.deadline or 0.0) for request in requests]
    )


def decode_request(message: pb.Request) -> InferenceRequest:
    return InferenceRequest(_arrays(message.inputs), message.deadline or None)


def encode_results(results: Sequence[InferenceResult | Exception]) -> pb.InferManyResponse:
    response = pb.InferManyResponse()
    for result in results:
        if isinstance(result, InferenceResult):
            response.results.add(
                outputs=_tensors(result.outputs), batch_requests=result.batch_requests, batch_rows=result.batch_rows
            )
        elif isinstance(result, DeadlinePassed):
            response.results.add(failure=pb.Result.EXPIRED, message=str(result))
        elif isinstance(result, InferenceError):
            response.results.add(failure=pb.Result.REFUSED, message=str(result))
        else:  # the replica returns no other kind; raising makes it INTERNAL for the whole call, loudly
            raise TypeError(f"cannot send {type(result).__name__} as a result")
    return response


def decode_result(message: pb.Result) -> InferenceResult | Exception:
    if message.failure == pb.Result.EXPIRED:
        return DeadlinePassed(message.message)
    if message.failure == pb.Result.REFUSED:
        return InferenceError(message.message)
    return InferenceResult(_arrays(message.outputs), message.batch_requests, message.batch_rows)


def _tensors(arrays: Tensors) -> list[pb.Tensor]:
    return [
        pb.Tensor(name=name, datatype=Datatype.from_numpy(array.dtype).value, shape=array.shape, data=array.tobytes())
        for name, array in arrays.items()
    ]


def _arrays(tensors: Sequence[pb.Tensor]) -> Tensors:
    arrays: Tensors = {}
    for tensor in tensors:
        try:
            dtype = Datatype(tensor.datatype).numpy
            arrays[tensor.name] = np.frombuffer(tensor.data, dtype=dtype).reshape(tuple(tensor.shape))
        except ValueError as exc:
            raise ValueError(f"tensor {tensor.name!r}: {exc}") from exc
    return arrays
