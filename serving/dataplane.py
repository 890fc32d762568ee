"""The replica data plane: a router hands a replica the requests it coalesced, over one TCP connection.

Serve keeps what it is there for: placing replicas on their pool's nodes, replacing them,
scaling them. Requests skip its per-call path (the handle's router thread, Ray's task
submission, the replica's request wrapper), which was most of the router's CPU per call and
~4 ms of a request's latency at one in flight. Each replica listens on its node's address, at a
port the OS picks, and registers it in the replica directory (serving/directory.py) with a
secret of its own that a caller presents first on each connection: only who can read the
directory, that is who can reach Ray, can call a replica. The traffic is plaintext, as Ray's
own is between nodes.

The connection carries frames, each `length (4 bytes) | call id (4 bytes) | message`, big-endian:
the caller's secret (call id 0, answered by an `InferManyResponse` that says who shares the
replica's shared memory, or by a refusal), then
`InferManyRequest`s, each answered by the `InferManyResponse` with its id
(protos/quiver_replica.proto). Not gRPC: both ends are Quiver's, nothing outside the cluster
speaks this, and a grpc.aio call costs each end more CPU than the replica's own work on a small
model (benchmarks/NOTES.md, "The data plane without gRPC").

An input a client put in system shared memory travels by reference when the replica shares the
router's /dev/shm (serving/segments.py): the segment, offset and size, not its bytes; the replica
maps it read-only. One it cannot read fails alone, as an `InferenceError`; so does one the
router would copy into the message from a segment the client shrank since its request was read.

`DataPlane` runs in the replica, on its event loop; `DataPlaneClient` is a router's persistent
connection to one replica. The protocol lives here only, both ends of it.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import secrets
import socket
import uuid
from collections.abc import Awaitable, Callable, Sequence

import numpy as np
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer
from google.protobuf.message import DecodeError

from quiver._proto import quiver_replica_pb2 as pb

from . import segments
from .datatypes import Datatype
from .directory import Endpoint, Registration
from .requests import DeadlinePassed, InferenceError, InferenceRequest, InferenceResult, Tensors
from .segments import SegmentError, Segments, Slice

logger = logging.getLogger(__name__)

InferMany = Callable[[list[InferenceRequest]], Awaitable[list[InferenceResult | Exception]]]

_HEADER = 8
_HELLO = 0  # the call id of the caller's secret
_HELLO_MOST = 1024  # bytes: a stranger must not make the replica buffer a large "secret"
_CONNECT_TIMEOUT_S = 5.0


class ReplicaUnreachable(ConnectionError):
    """The call did not get an answer from the replica (gone, restarting, or refusing the caller)."""


class DataPlaneServer:
    """The listening end of a replica's data plane, admitting only callers with its secret."""

    def __init__(self, infer_many: InferMany) -> None:
        self.token = secrets.token_urlsafe(32)
        self._infer_many = infer_many
        self._segments = Segments()
        self._sweeping: asyncio.Task[None] | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self._calls: set[asyncio.Task[None]] = set()
        self._stopping = False

    async def start(self, host: str) -> str:
        """Listen on `host` at a port the OS picks; returns HOST:PORT. Runs on the loop that serves."""
        self._server = await asyncio.start_server(self._serve, host, 0)
        self._sweeping = asyncio.create_task(self._sweep())
        return f"{host}:{self._server.sockets[0].getsockname()[1]}"

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls; those in flight get `grace_s` to finish."""
        if self._server is None:
            return
        self._stopping = True
        self._server.close()
        if self._calls:
            await asyncio.wait(self._calls, timeout=grace_s)
        for call in list(self._calls):
            call.cancel()
        for connection in list(self._connections):
            connection.close()
        if self._sweeping is not None:
            self._sweeping.cancel()
        self._segments.close()

    async def _sweep(self, every_s: float = 1.0) -> None:
        """Free the memory of segments their clients unlinked, also while no request comes."""
        while True:
            await asyncio.sleep(every_s)
            self._segments.sweep()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _keep_alive(writer)
        self._connections.add(writer)
        try:
            _, presented = await _read_frame(reader, _HELLO_MOST)
            if not hmac.compare_digest(presented, self.token.encode()):
                writer.write(_frame(_HELLO, _refusal("unknown caller")))
                return
            writer.write(_frame(_HELLO, pb.InferManyResponse(host=_host()).SerializeToString()))
            while True:
                call_id, message = await _read_frame(reader)
                call = asyncio.create_task(self._answer(call_id, message, writer))
                self._calls.add(call)
                call.add_done_callback(self._calls.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the caller went away; its calls in flight finish unheard
        finally:
            self._connections.discard(writer)
            writer.close()

    async def _answer(self, call_id: int, message: bytes, writer: asyncio.StreamWriter) -> None:
        if self._stopping:
            answer = _refusal("stopping")
        else:
            try:
                requests = [self._decode(request) for request in pb.InferManyRequest.FromString(message).requests]
            except (DecodeError, ValueError) as exc:
                answer = _refusal(f"malformed call: {exc}")
            else:
                try:
                    answer = encode_results(await self._run(requests)).SerializeToString()
                except Exception as exc:  # noqa: BLE001 - the caller hears of it, as with any server
                    logger.exception("data plane call failed")
                    answer = _refusal(f"{type(exc).__name__}: {exc}")
        # Not drained: answers waiting to be sent are as many as the calls a router keeps in flight.
        if not writer.is_closing():
            writer.write(_frame(call_id, answer))

    def _decode(self, message: pb.Request) -> InferenceRequest | InferenceError:
        try:
            return decode_request(message, self._segments)
        except SegmentError as exc:
            return InferenceError(str(exc))

    async def _run(self, requests: list[InferenceRequest | InferenceError]) -> list[InferenceResult | Exception]:
        """Each readable request's answer, and in its place the reason for each unreadable one."""
        readable = [request for request in requests if isinstance(request, InferenceRequest)]
        answers = iter(await self._infer_many(readable) if readable else ())
        return [next(answers) if isinstance(request, InferenceRequest) else request for request in requests]


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


class DataPlaneClient:
    """A router's connection to one replica's data plane, opened at the first call and kept."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._connection: _Connection | None = None
        self._connecting = asyncio.Lock()

    async def infer_many(self, requests: Sequence[InferenceRequest]) -> list[InferenceResult | Exception]:
        """One answer per request, in order; `ReplicaUnreachable` if the call itself failed."""
        connection = await self._connected()
        message, unsent = encode_requests(requests, connection.shares_memory)
        results: list[InferenceResult | Exception] = []
        if message.requests:
            response = pb.InferManyResponse.FromString(await connection.call(message.SerializeToString()))
            if response.refused:
                raise ReplicaUnreachable(f"replica at {self.endpoint.address}: {response.refused}")
            if len(response.results) != len(message.requests):
                raise ReplicaUnreachable(
                    f"replica at {self.endpoint.address}: {len(response.results)} answers to {len(message.requests)} requests"
                )
            results = [decode_result(result) for result in response.results]
        answers = iter(results)
        return [unsent[i] if i in unsent else next(answers) for i in range(len(requests))]

    async def close(self, grace_s: float | None = None) -> None:
        """Close the connection once the calls in flight are answered, or after `grace_s`."""
        if self._connection is not None:
            await self._connection.close(grace_s)

    async def _connected(self) -> _Connection:
        async with self._connecting:
            if self._connection is None or self._connection.lost is not None:
                self._connection = await _Connection.open(self.endpoint)
        return self._connection


class _Connection:
    """One TCP connection to a replica: calls go out as frames, answers come back by call id."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str, shares_memory: bool) -> None:
        self.lost: str | None = None  # why the connection ended, once it has
        self.shares_memory = shares_memory  # the replica sees this process's /dev/shm: inputs there go by reference
        self._writer = writer
        self._address = address
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._last_id = _HELLO
        self._reading = asyncio.create_task(self._read(reader))

    @classmethod
    async def open(cls, endpoint: Endpoint) -> _Connection:
        """Connect and present the secret; the replica answers it before any call is sent."""
        host, _, port = endpoint.address.rpartition(":")
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), _CONNECT_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError) as exc:
            raise ReplicaUnreachable(f"replica at {endpoint.address}: cannot connect: {exc!r}") from exc
        try:
            _keep_alive(writer)
            writer.write(_frame(_HELLO, endpoint.token.encode()))
            _, answer = await asyncio.wait_for(_read_frame(reader), _CONNECT_TIMEOUT_S)
            greeting = pb.InferManyResponse.FromString(answer)
            refused = greeting.refused
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, DecodeError) as exc:
            refused = f"no greeting: {exc!r}"
        if refused:
            writer.close()
            raise ReplicaUnreachable(f"replica at {endpoint.address}: {refused}")
        return cls(reader, writer, endpoint.address, bool(greeting.host) and greeting.host == _host())

    async def call(self, message: bytes) -> bytes:
        if self.lost is not None:
            raise ReplicaUnreachable(f"replica at {self._address}: {self.lost}")
        self._last_id = self._last_id % (2**32 - 1) + 1  # 1, 2, ... 2**32 - 1, 1, ...: never the greeting's 0
        call_id = self._last_id
        answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = answer
        try:
            self._writer.write(_frame(call_id, message))
            await self._writer.drain()
            return await answer
        except ReplicaUnreachable:
            raise
        except ConnectionError as exc:
            raise ReplicaUnreachable(f"replica at {self._address}: {exc!r}") from exc
        finally:  # also when the caller gave up: a late answer is dropped
            self._pending.pop(call_id, None)

    async def close(self, grace_s: float | None) -> None:
        if self._pending and grace_s:
            await asyncio.wait(list(self._pending.values()), timeout=grace_s)
        self.lost = "closed by the router"
        self._writer.close()
        await asyncio.wait([self._reading])

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                call_id, message = await _read_frame(reader)
                answer = self._pending.get(call_id)
                if answer is not None and not answer.done():
                    answer.set_result(message)
        except asyncio.IncompleteReadError:
            self.lost = self.lost or "closed by the replica"
        except ConnectionError as exc:
            self.lost = self.lost or repr(exc)
        finally:
            self.lost = self.lost or "closed"
            self._writer.close()
            for answer in self._pending.values():
                if not answer.done():
                    answer.set_exception(ReplicaUnreachable(f"replica at {self._address}: {self.lost}"))


def _frame(call_id: int, message: bytes) -> bytes:
    return len(message).to_bytes(4, "big") + call_id.to_bytes(4, "big") + message


async def _read_frame(reader: asyncio.StreamReader, most: int = 2**32) -> tuple[int, bytes]:
    header = await reader.readexactly(_HEADER)
    length = int.from_bytes(header[:4], "big")
    if length > most:
        raise ConnectionError(f"a frame of {length} bytes, more than {most}")
    return int.from_bytes(header[4:], "big"), await reader.readexactly(length)


@functools.cache
def _host() -> str:
    return segments.host()


def _refusal(reason: str) -> bytes:
    return pb.InferManyResponse(refused=reason).SerializeToString()


def _keep_alive(writer: asyncio.StreamWriter) -> None:
    """Notice a peer whose node vanished without closing the connection within ~15 s, even between
    calls: keepalive probes after 10 s idle, and unacknowledged data given up after 15 s."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 1), ("TCP_USER_TIMEOUT", 15_000)):
        if hasattr(socket, option):  # Linux names; elsewhere the system's defaults apply
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def encode_requests(
    requests: Sequence[InferenceRequest], by_reference: bool = False
) -> tuple[pb.InferManyRequest, dict[int, InferenceError]]:
    """The message, and by position the requests left out of it with why: an input in a segment shrunk since
    it was checked. With `by_reference`, inputs that lie in a segment this process mapped travel as where they lie."""
    message, unsent = pb.InferManyRequest(), {}
    for i, request in enumerate(requests):  # built in place: a message given to a constructor is copied, bytes and all
        try:
            _add_tensors(message.requests.add(deadline=request.deadline or 0.0).inputs, request.inputs, by_reference)
        except SegmentError as exc:
            del message.requests[-1]
            unsent[i] = InferenceError(f"input in shared memory: {exc}")
    return message, unsent


def decode_request(message: pb.Request, shared: Segments | None = None) -> InferenceRequest:
    """`SegmentError` if an input sent by reference cannot be read (without `shared`, none can)."""
    return InferenceRequest(_arrays(message.inputs, shared), message.deadline or None)


def encode_results(results: Sequence[InferenceResult | Exception]) -> pb.InferManyResponse:
    response = pb.InferManyResponse()
    for result in results:
        if isinstance(result, InferenceResult):
            added = response.results.add(
                batch_requests=result.batch_requests,
                batch_rows=result.batch_rows,
                queue_seconds=result.queue_s,
                compute_seconds=result.compute_s,
            )
            _add_tensors(added.outputs, result.outputs)
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
    return InferenceResult(
        _arrays(message.outputs), message.batch_requests, message.batch_rows, message.queue_seconds, message.compute_seconds
    )


def _add_tensors(field: RepeatedCompositeFieldContainer[pb.Tensor], arrays: Tensors, by_reference: bool = False) -> None:
    for name, array in arrays.items():
        where = segments.MAPPED.find(array) if by_reference else None
        datatype = Datatype.from_numpy(array.dtype).value
        if where is None:
            segments.check_size(array)  # a view of a client's segment is read here: not past its end now
            field.add(name=name, datatype=datatype, shape=array.shape, data=array.tobytes())
        else:
            segment = pb.Segment(name=where.name, offset=where.offset, byte_size=where.byte_size, inode=where.inode)
            field.add(name=name, datatype=datatype, shape=array.shape, segment=segment)


def _arrays(tensors: Sequence[pb.Tensor], shared: Segments | None = None) -> Tensors:
    arrays: Tensors = {}
    for tensor in tensors:
        data = tensor.data
        if tensor.HasField("segment"):
            if shared is None:
                raise SegmentError(f"input {tensor.name!r}: sent in shared memory, which this process does not read")
            where = tensor.segment
            data = shared.read(Slice(where.name, where.offset, where.byte_size, where.inode))
        try:
            dtype = _DTYPES[tensor.datatype]
            arrays[tensor.name] = np.frombuffer(data, dtype=dtype).reshape(tuple(tensor.shape))
        except KeyError:
            raise ValueError(f"tensor {tensor.name!r}: unknown datatype {tensor.datatype!r}") from None
        except ValueError as exc:
            raise ValueError(f"tensor {tensor.name!r}: {exc}") from exc
    return arrays


# By name: an enum's lookup by value costs ten times a dict's, once per tensor each way.
_DTYPES: dict[str, np.dtype] = {datatype.value: datatype.numpy for datatype in Datatype}
