"""The router's TLS, mTLS and bearer tokens, with real certificates and tritonclient."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc

from quiver.serving import Replicas, build_example, from_onnx_file, write_version

from .certs import Authority, Pem
from .models import build_pair
from .serverproc import ServerProcess, quiver_serve

EVERYTHING = "e" * 8 + "0123456789abcdef"  # may use every model
PAIR_ONLY = "p" * 8 + "0123456789abcdef"  # may use `pair` only
ROTATED_IN = "r" * 8 + "0123456789abcdef"


@dataclass(frozen=True)
class Secured:
    server: ServerProcess
    ca: Path
    client: Pem
    stranger: Pem  # signed by another CA
    tokens: Path


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    root = tmp_path_factory.mktemp("secured")
    for name, build in (("example", build_example), ("pair", build_pair)):
        signature = from_onnx_file(build(root / "store" / name / "1" / "model.onnx")).manifest
        variant = signature.variants[0].model_copy(update={"replicas": Replicas(num_cpus=0.5)})
        write_version(root / "store", signature.model_copy(update={"name": name, "variants": [variant]}))
    authority, other = Authority(root, "quiver-ca"), Authority(root, "other-ca")
    server_pem = authority.issue("router", server=True)
    tokens = root / "tokens"
    tokens.write_text(f"# who may call what\n{EVERYTHING} *\n{PAIR_ONLY} pair\n")
    with quiver_serve(
        str(root / "store"), "--tls-cert", str(server_pem.cert), "--tls-key", str(server_pem.key),
        "--tls-client-ca", str(authority.pem), "--token-file", str(tokens),
    ) as server:
        yield Secured(server, authority.pem, authority.issue("client", server=False), other.issue("stranger", server=False), tokens)


def client(secured: Secured, pem: Pem | None) -> triton.InferenceServerClient:
    if pem is None:
        return triton.InferenceServerClient(secured.server.address, ssl=True, root_certificates=str(secured.ca))
    return triton.InferenceServerClient(
        secured.server.address, ssl=True, root_certificates=str(secured.ca),
        private_key=str(pem.key), certificate_chain=str(pem.cert),
    )


def request_tensors(client_module: ModuleType, model: str) -> list:
    """One row for `example` or the pair model, as `client_module`'s (tritonclient.grpc or .http) InferInputs."""
    if model == "example":
        tensors = [client_module.InferInput("input", [1, 64], "FP32")]
        tensors[0].set_data_from_numpy(np.ones((1, 64), np.float32))
    else:
        tensors = [client_module.InferInput("x", [1, 3], "FP32"), client_module.InferInput("k", [1, 2], "INT64")]
        tensors[0].set_data_from_numpy(np.ones((1, 3), np.float32))
        tensors[1].set_data_from_numpy(np.zeros((1, 2), np.int64))
    return tensors


def infer(connection: triton.InferenceServerClient, token: str | None, model: str = "example") -> str:
    """"OK" or the status of one inference."""
    tensors = request_tensors(triton, model)
    headers = {"authorization": f"Bearer {token}"} if token else None
    try:
        connection.infer(model, tensors, headers=headers, client_timeout=60)
    except triton.InferenceServerException as exc:
        return exc.status()
    return "OK"


def test_mtls_with_a_token_is_served(secured: Secured) -> None:
    connection = client(secured, secured.client)
    assert infer(connection, EVERYTHING) == "OK"
    assert infer(connection, PAIR_ONLY, model="pair") == "OK"


@pytest.mark.parametrize("who", ["no client certificate", "certificate of another CA", "plaintext"])
def test_clients_without_a_trusted_certificate_are_refused_at_the_handshake(secured: Secured, who: str) -> None:
    if who == "plaintext":
        connection = triton.InferenceServerClient(secured.server.address)
    else:
        connection = client(secured, None if who == "no client certificate" else secured.stranger)
    assert infer(connection, EVERYTHING) == "StatusCode.UNAVAILABLE"


@pytest.mark.parametrize(
    ("token", "model", "status"),
    [
        (None, "example", "StatusCode.UNAUTHENTICATED"),
        ("not-a-token-we-know-at-all", "example", "StatusCode.UNAUTHENTICATED"),
        (PAIR_ONLY, "example", "StatusCode.PERMISSION_DENIED"),
    ],
)
def test_tokens_and_their_scopes(secured: Secured, token: str | None, model: str, status: str) -> None:
    assert infer(client(secured, secured.client), token, model) == status


def test_health_stays_open_for_probes(secured: Secured) -> None:
    credentials = grpc.ssl_channel_credentials(
        secured.ca.read_bytes(), secured.client.key.read_bytes(), secured.client.cert.read_bytes()
    )
    with grpc.secure_channel(secured.server.address, credentials) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert client(secured, secured.client).is_server_live()


def test_tokens_rotate_without_a_restart_and_never_reach_the_log(secured: Secured) -> None:
    connection = client(secured, secured.client)
    original = secured.tokens.read_text()
    refusal = "line 2: a token needs at least 16 characters"
    try:
        secured.tokens.write_text(f"{ROTATED_IN} *\n{PAIR_ONLY} pair\n")
        _eventually(lambda: infer(connection, ROTATED_IN) == "OK", "the rotated token to be taken", secured.server)
        assert infer(connection, EVERYTHING) == "StatusCode.UNAUTHENTICATED"
        refused_before = secured.server.log().count(refusal)
        secured.tokens.write_text(f"{ROTATED_IN} *\nshort *\n")  # refused: the last good file stays
        _eventually(lambda: secured.server.log().count(refusal) > refused_before, "the server to refuse the file", secured.server)
        assert infer(connection, ROTATED_IN) == "OK" and infer(connection, PAIR_ONLY, "pair") == "OK"
    finally:
        secured.tokens.write_text(original)
        _eventually(lambda: infer(connection, EVERYTHING) == "OK", "the original tokens to be taken back", secured.server)
    log = secured.server.log()
    assert "token file" in log and refusal in log
    for secret in (EVERYTHING, PAIR_ONLY, ROTATED_IN, "short"):
        assert secret not in log


def _eventually(condition, what: str, server: ServerProcess, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting {timeout_s:.0f} s for {what}:\n{server.own_log()[-3000:]}"
        time.sleep(0.1)
