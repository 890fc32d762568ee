"""A property-based fuzzer over the REST door's infer endpoint, as tests/test_fuzz.py is over gRPC:
malformed JSON, structurally wrong documents, wrong binary sizes and headers, huge declared shapes,
shared memory parameters naming nothing. Whatever the body, an answer comes back in time, with a
status from the expected set and, when it is an error, Triton's `{"error": "..."}`; and the server
keeps serving good requests."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from urllib.parse import urlsplit

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .serverproc import ServerProcess

EXPECTED = {200, 400, 404, 413, 429}
PATHS = ["/v2/models/example/infer", "/v2/models/pair/versions/2/infer", "/v2/models/pair/versions/9/infer", "/v2/models/nope/infer",
         "/v2/models/tuned/infer", "/v2/models/%C3%ABxample/infer"]  # fmt: skip
DATATYPES = ["FP32", "INT64", "FP16", "BYTES", "BOOL", "", "fp32", 7, None]
NAMES = ["input", "x", "k", "", "inpüt", 3, None]
HUGE = [1 << 31, 1 << 62, -(1 << 62), 10**30]
# Header values stay printable: control characters make it no HTTP request (aiohttp's parser answers a plain 400).
PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
shapes = st.one_of(st.lists(st.one_of(st.integers(-3, 70), st.sampled_from(HUGE)), max_size=4), json_values)


@st.composite
def tensor(draw: st.DrawFn, binary: list[bytes]) -> dict:
    document = {"name": draw(st.sampled_from(NAMES)), "datatype": draw(st.sampled_from(DATATYPES)), "shape": draw(shapes)}
    kind = draw(st.sampled_from(["data", "nested", "binary", "binary-wrong", "shared-memory", "nothing", "junk"]))
    if kind == "data":
        document["data"] = draw(st.lists(st.one_of(st.floats(width=32, allow_nan=False), st.integers(-(1 << 70), 1 << 70), st.text(max_size=3)), max_size=130))
    elif kind == "nested":
        document["data"] = draw(st.lists(st.lists(st.floats(width=32, allow_nan=False), max_size=70), max_size=3))
    elif kind in ("binary", "binary-wrong"):
        raw = draw(st.binary(max_size=600))
        binary.append(raw)
        size = len(raw) if kind == "binary" else draw(st.one_of(st.integers(-5, 1 << 40), json_values))
        document["parameters"] = {"binary_data_size": size}
    elif kind == "shared-memory":
        document["parameters"] = {
            "shared_memory_region": draw(st.one_of(st.text(max_size=6), json_values)),
            "shared_memory_byte_size": draw(st.one_of(st.integers(-5, 1 << 40), json_values)),
            **({"shared_memory_offset": draw(st.integers(-5, 1 << 40))} if draw(st.booleans()) else {}),
        }
    elif kind == "junk":
        document = draw(json_values)
    return document


@st.composite
def bodies(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    path = draw(st.sampled_from(PATHS))
    form = draw(st.sampled_from(["request", "request", "request", "garbage", "truncated", "any-json"]))
    if form == "garbage":
        return path, draw(st.binary(max_size=300)), {}
    if form == "any-json":
        return path, json.dumps(draw(json_values)).encode(), {}
    binary: list[bytes] = []
    document: dict = {"inputs": draw(st.lists(tensor(binary), max_size=3))}
    if draw(st.booleans()):
        document["outputs"] = [
            {"name": draw(st.sampled_from(["output", "total", "nope", 1])), "parameters": draw(st.sampled_from([{}, {"binary_data": True}, {"shared_memory_region": "r", "shared_memory_byte_size": 8}]))}
            for _ in range(draw(st.integers(0, 2)))
        ]  # fmt: skip
    if draw(st.booleans()):
        document["parameters"] = draw(st.dictionaries(st.sampled_from(["timeout", "priority", "quiver.variant", "binary_data_output", "x"]), json_values, max_size=3))
    header = json.dumps(document).encode()
    if form == "truncated":
        return path, header[: draw(st.integers(0, max(0, len(header) - 1)))], {}
    headers = {}
    if binary or draw(st.booleans()):
        length = draw(st.one_of(st.just(str(len(header))), st.just(str(len(header))), st.integers(-3, 1 << 40).map(str), st.text(PRINTABLE, max_size=4)))
        headers["Inference-Header-Content-Length"] = length
    return path, header + b"".join(binary), headers


@pytest.fixture(scope="module")
def connection(server: ServerProcess) -> Iterator[http.client.HTTPConnection]:
    url = urlsplit(server.http_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    yield connection
    connection.close()


def post(connection: http.client.HTTPConnection, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    # "In time" means not hung: the connection's 30 s timeout fails the test.
    for attempt in (1, 2):
        try:
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            connection.close()  # an idle keep-alive connection the server let go: once more, on a new one
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(case=bodies())
def test_any_body_gets_an_expected_status_in_time(connection: http.client.HTTPConnection, case: tuple[str, bytes, dict[str, str]]) -> None:
    path, body, headers = case
    status, answer = post(connection, path, body, headers)
    assert status in EXPECTED, f"{status} {answer[:300]!r} for {path} {headers} {body[:300]!r}"
    if status != 200:
        error = json.loads(answer)
        assert isinstance(error, dict) and isinstance(error.get("error"), str) and error["error"], answer


def test_the_rest_door_still_serves_after_the_fuzzing(connection: http.client.HTTPConnection) -> None:
    body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": np.ones(64).tolist()}]}).encode()
    status, answer = post(connection, "/v2/models/example/infer", body, {"Content-Type": "application/json"})
    assert status == 200 and json.loads(answer)["outputs"][0]["shape"] == [1, 10]
