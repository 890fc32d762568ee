"""The REST door: KServe v2 / Triton HTTP endpoints on aiohttp, over the same operations as gRPC.

Each handler reads the path and body (router/rest_codec.py), passes the caller's headers to the
operations (router/operations.py), which decides who may call what, and writes JSON. Errors are
answered as KServe and Triton answer them, `{"error": "..."}`, with the HTTP status `_STATUS`
maps the router's error to: the one table of this transport. aiohttp runs on the router's own
event loop, beside grpc.aio, so both doors share the operations' state without locks.

Health: `/v2/health/live` is 200 while the process runs; `/v2/health/ready` and a model's
`ready` are 200 when ready and 400 when not (the protocol's "4xx is false"), and the server
turns unready as soon as it starts draining, so load balancers move away before it stops.
"""

from __future__ import annotations

import logging
import math
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import grpc
from aiohttp import web

from . import rest_codec
from .operations import Caller, Operations, InferRequest
from .errors import RouterError, status_of
from .metrics import HTTP

if TYPE_CHECKING:
    from .tracing import Tracing

logger = logging.getLogger(__name__)

# The router's errors (by their gRPC code) as HTTP statuses; anything else is 500.
_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,  # routing constraints no variant meets
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.UNIMPLEMENTED: 501,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _http_status(exc: BaseException) -> int:
    return _STATUS.get(exc.code, 500) if isinstance(exc, RouterError) else getattr(exc, "status", 500)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RouterError as exc:
        _, message = status_of(exc)
        headers = {}
        if exc.retry_after_ms is not None:
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_ms / 1000)))
        if _http_status(exc) == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return _error(_http_status(exc), message, headers)
    except web.HTTPException as exc:  # aiohttp's own: no such path, wrong method, body too large
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason if exc.text is None or exc.text.startswith(f"{exc.status}:") else exc.text)
    except Exception:
        logger.exception("%s %s failed", request.method, request.path)
        return _error(500, status_of(Exception())[1])


def _caller(request: web.Request) -> Caller:
    return [(key.lower(), value) for key, value in request.headers.items()]


def _names(request: web.Request) -> tuple[str, str]:
    return request.match_info["model"], request.match_info.get("version", "")


def _boolean(value: bool, key: str) -> web.Response:
    return web.json_response({key: value}, status=200 if value else 400)


class RestServer:
    """The HTTP listener: `start` binds (port 0: any free one), `drain` turns it unready, `stop` closes it."""

    def __init__(
        self,
        operations: Operations,
        host: str,
        port: int,
        max_body_bytes: int,
        grace_period_s: float,
        tls: ssl.SSLContext | None,
        tracing: Tracing | None = None,
    ) -> None:
        self._operations = operations
        self._host, self._port, self._tls = host, port, tls
        self._draining = False
        app = web.Application(middlewares=[_errors], client_max_size=max_body_bytes)
        get = [
            ("/v2/health/live", self._live),
            ("/v2/health/ready", self._ready),
            ("/v2", self._server_metadata),
            ("/v2/models/stats", self._statistics),  # before /v2/models/{model}, which would match it
        ]
        for path, handler in get:
            app.router.add_get(path, handler)
        # Tracing, when on, wraps the call of infer; when off it is not there at all (router/tracing.py).
        self._call_infer = operations.infer if tracing is None else tracing.http_infer(operations.infer, _http_status)
        for model in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            app.router.add_get(model, self._model_metadata)
            app.router.add_get(f"{model}/ready", self._model_ready)
            app.router.add_get(f"{model}/config", self._model_config)
            app.router.add_get(f"{model}/stats", self._statistics)
            app.router.add_post(f"{model}/infer", self._infer)
        app.router.add_post("/v2/repository/index", self._repository_index)
        app.router.add_post("/v2/repository/models/{model}/load", self._load_model)
        app.router.add_post("/v2/repository/models/{model}/unload", self._unload_model)
        for regions in ("/v2/systemsharedmemory", "/v2/systemsharedmemory/region/{region}"):
            app.router.add_get(f"{regions}/status", self._region_status)
            app.router.add_post(f"{regions}/unregister", self._unregister_region)
        app.router.add_post("/v2/systemsharedmemory/region/{region}/register", self._register_region)
        for regions in ("/v2/cudasharedmemory", "/v2/cudasharedmemory/region/{region}"):
            app.router.add_get(f"{regions}/status", self._cuda_region_status)
            app.router.add_post(f"{regions}/unregister", self._unregister_cuda_region)
        app.router.add_post("/v2/cudasharedmemory/region/{region}/register", self._register_cuda_region)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=grace_period_s)

    async def start(self) -> int:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, ssl_context=self._tls, reuse_port=False)
        await site.start()
        return self._runner.addresses[0][1]

    def drain(self) -> None:
        self._draining = True

    async def stop(self) -> None:
        """Stop listening, finish the requests in flight (within the grace period), close connections."""
        await self._runner.cleanup()

    async def _live(self, request: web.Request) -> web.Response:
        return _boolean(self._operations.live(), "live")

    async def _ready(self, request: web.Request) -> web.Response:
        return _boolean(not self._draining and self._operations.ready(), "ready")

    async def _server_metadata(self, request: web.Request) -> web.Response:
        return web.json_response(rest_codec.server_metadata(self._operations.server_metadata(_caller(request))))

    async def _model_ready(self, request: web.Request) -> web.Response:
        return _boolean(self._operations.model_ready(_caller(request), *_names(request)), "ready")

    async def _model_metadata(self, request: web.Request) -> web.Response:
        return web.json_response(rest_codec.model_metadata(self._operations.model_metadata(_caller(request), *_names(request))))

    async def _model_config(self, request: web.Request) -> web.Response:
        return web.json_response(rest_codec.model_config(self._operations.model_config(_caller(request), *_names(request))))

    async def _statistics(self, request: web.Request) -> web.Response:
        name, version = request.match_info.get("model", ""), request.match_info.get("version", "")
        return web.json_response(rest_codec.model_statistics(self._operations.statistics(_caller(request), name, version)))

    async def _repository_index(self, request: web.Request) -> web.Response:
        ready_only = rest_codec.index_ready_only(await request.read())
        return web.json_response(rest_codec.repository_index(await self._operations.repository_index(_caller(request), ready_only)))

    async def _load_model(self, request: web.Request) -> web.Response:
        body = await request.read()
        await self._operations.load_model(_caller(request), request.match_info["model"], lambda: rest_codec.load_parameters(body))
        return web.json_response({})

    async def _unload_model(self, request: web.Request) -> web.Response:
        await self._operations.unload_model(_caller(request), request.match_info["model"])
        return web.json_response({})

    async def _region_status(self, request: web.Request) -> web.Response:
        regions = self._operations.region_status(_caller(request), request.match_info.get("region", ""))
        return web.json_response(rest_codec.region_status(regions))

    async def _register_region(self, request: web.Request) -> web.Response:
        body = await request.read()
        self._operations.register_region(_caller(request), request.match_info["region"], lambda: rest_codec.region_registration(body))
        return web.json_response({})

    async def _unregister_region(self, request: web.Request) -> web.Response:
        self._operations.unregister_region(_caller(request), request.match_info.get("region", ""))
        return web.json_response({})

    async def _cuda_region_status(self, request: web.Request) -> web.Response:
        return web.json_response(self._operations.cuda_region_status(_caller(request), request.match_info.get("region", "")))

    async def _unregister_cuda_region(self, request: web.Request) -> web.Response:
        self._operations.unregister_cuda_region(_caller(request), request.match_info.get("region", ""))
        return web.json_response({})

    async def _register_cuda_region(self, request: web.Request) -> web.Response:
        self._operations.register_cuda_region(_caller(request))

    async def _infer(self, request: web.Request) -> web.Response:
        model, version = _names(request)
        decoded: list[rest_codec.RestInfer] = []

        async def read() -> InferRequest:  # only once the caller may use the model
            body = await request.read()
            decoded.append(rest_codec.infer_request(model, version, body, request.headers.get(rest_codec.HEADER_LENGTH)))
            return decoded[0].request

        answer = await self._call_infer(_caller(request), model, read, HTTP)
        body, headers = rest_codec.infer_response(answer, decoded[0])
        return web.Response(body=body, headers=headers)


def ssl_context(cert: str, key: str, client_ca: str | None) -> ssl.SSLContext:
    """The server's TLS; with a client CA, clients must present a certificate it signed (mTLS)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


