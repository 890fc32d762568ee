"""The REST door's one status table, on a real aiohttp listener over fake operations (no Ray).

Every router error becomes `{"error": message}` with the HTTP status KServe and Triton use for
it; a shed request says when to come back (`Retry-After`), and a bug says nothing of itself.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import pytest

from quiver.router.auth import PermissionDenied, Unauthenticated
from quiver.router.operations import ServerMetadata
from quiver.router.policy import NoVariantFits
from quiver.router.errors import DeadlineExceeded, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from quiver.router.rest import RestServer


class FailingPlane:
    """Operations' interface, where every model operation raises `error` and probes answer `ready`."""

    def __init__(self, error: Exception, ready: bool = True) -> None:
        self.error, self._ready, self.read = error, ready, False

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self._ready

    def server_metadata(self, caller: object) -> ServerMetadata:
        return ServerMetadata("quiver", "0", ())

    def model_ready(self, caller: object, name: str, version: str) -> bool:
        raise self.error

    async def infer(self, caller: object, model: str, read: object, protocol: str) -> object:
        raise self.error


def call(plane: FailingPlane, path: str, body: bytes | None = None, drain: bool = False) -> tuple[int, dict, dict[str, str]]:
    async def run() -> tuple[int, dict, dict[str, str]]:
        server = RestServer(plane, "127.0.0.1", 0, 1 << 20, 1.0, None)  # type: ignore[arg-type]
        port = await server.start()
        if drain:
            server.drain()
        try:
            return await asyncio.to_thread(_fetch, f"http://127.0.0.1:{port}{path}", body)
        finally:
            await server.stop()

    return asyncio.run(run())


def _fetch(url: str, body: bytes | None) -> tuple[int, dict, dict[str, str]]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=30) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), dict(error.headers)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (InvalidArgument("bad shape"), 400),
        (NoVariantFits("no variant meets quiver.min_accuracy 0.99"), 400),
        (Unauthenticated("missing authorization"), 401),
        (PermissionDenied("not this model"), 403),
        (NotFound("no such model"), 404),
        (ResourceExhausted("every variant is full", retry_after_ms=1500), 429),
        (Unavailable("no replica could answer"), 503),
        (DeadlineExceeded("the deadline passed"), 504),
    ],
)
def test_router_errors_map_to_http_statuses(error: Exception, status: int) -> None:
    got, answer, headers = call(FailingPlane(error), "/v2/models/m/infer", b"{}")
    assert (got, answer) == (status, {"error": str(error)})
    assert headers.get("Retry-After") == ("2" if status == 429 else None)  # whole seconds, rounded up
    assert headers.get("WWW-Authenticate") == ("Bearer" if status == 401 else None)
    assert call(FailingPlane(error), "/v2/models/m/versions/3/ready")[0] == status


def test_a_bug_is_500_without_details() -> None:
    status, answer, _ = call(FailingPlane(KeyError("secret internals")), "/v2/models/m/infer", b"{}")
    assert status == 500 and "secret" not in answer["error"] and "log" in answer["error"]


def test_readiness_is_200_or_400_and_turns_400_on_drain() -> None:
    assert call(FailingPlane(NotFound("x")), "/v2/health/live")[:2] == (200, {"live": True})
    assert call(FailingPlane(NotFound("x")), "/v2/health/ready")[:2] == (200, {"ready": True})
    assert call(FailingPlane(NotFound("x"), ready=False), "/v2/health/ready")[:2] == (400, {"ready": False})
    assert call(FailingPlane(NotFound("x")), "/v2/health/ready", drain=True)[:2] == (400, {"ready": False})
    assert call(FailingPlane(NotFound("x")), "/v2")[1]["name"] == "quiver"


def test_wrong_method_and_unknown_path_are_json_errors() -> None:
    assert call(FailingPlane(NotFound("x")), "/v2/models/m/infer")[0] == 405  # GET
    status, answer, _ = call(FailingPlane(NotFound("x")), "/v3")
    assert status == 404 and set(answer) == {"error"}
