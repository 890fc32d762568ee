"""The REST door's TLS, mTLS and bearer tokens: the same certificates and token file as gRPC, the same answers."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request

import gevent.ssl
import pytest
import tritonclient.http as triton

from .certs import Pem
from .test_security import EVERYTHING, PAIR_ONLY, Secured, request_tensors, secured  # noqa: F401 (the fixture)

# geventhttpclient checks the server's name with it; not ours to change.
pytestmark = pytest.mark.filterwarnings("ignore:ssl.match_hostname:DeprecationWarning")


def client(secured: Secured, pem: Pem | None) -> triton.InferenceServerClient:
    def context() -> gevent.ssl.SSLContext:
        made = gevent.ssl.create_default_context(cafile=str(secured.ca))
        if pem is not None:
            made.load_cert_chain(str(pem.cert), str(pem.key))
        return made

    assert secured.server.http_url.startswith("https://"), secured.server.http_url
    return triton.InferenceServerClient(
        secured.server.http_url.removeprefix("https://"), ssl=True, ssl_context_factory=context, network_timeout=60
    )


def infer(connection: triton.InferenceServerClient, token: str | None, model: str = "example") -> str:
    """"200" or the HTTP status of one inference."""
    tensors = request_tensors(triton, model)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        connection.infer(model, tensors, headers=headers)
    except triton.InferenceServerException as exc:
        return exc.status()
    return "200"


def test_mtls_with_a_token_is_served(secured: Secured) -> None:  # noqa: F811
    connection = client(secured, secured.client)
    assert infer(connection, EVERYTHING) == "200"
    assert infer(connection, PAIR_ONLY, model="pair") == "200"
    assert connection.is_server_live() and connection.is_model_ready("example", headers={"Authorization": f"Bearer {EVERYTHING}"})


@pytest.mark.parametrize(
    ("token", "model", "status"),
    [(None, "example", "401"), ("not-a-token-we-know-at-all", "example", "401"), (PAIR_ONLY, "example", "403")],
)
def test_tokens_and_their_scopes(secured: Secured, token: str | None, model: str, status: str) -> None:  # noqa: F811
    assert infer(client(secured, secured.client), token, model) == status


def test_metadata_needs_a_token_and_probes_do_not(secured: Secured) -> None:  # noqa: F811
    connection = client(secured, secured.client)
    with pytest.raises(triton.InferenceServerException) as error:
        connection.get_server_metadata()
    assert error.value.status() == "401"
    assert connection.get_server_metadata(headers={"Authorization": f"Bearer {PAIR_ONLY}"})["name"] == "quiver"
    with pytest.raises(triton.InferenceServerException) as error:
        connection.get_model_metadata("example", headers={"Authorization": f"Bearer {PAIR_ONLY}"})
    assert error.value.status() == "403"
    assert connection.is_server_ready()


@pytest.mark.parametrize("who", ["no client certificate", "certificate of another CA", "plaintext"])
def test_clients_without_a_trusted_certificate_are_refused(secured: Secured, who: str) -> None:  # noqa: F811
    url = secured.server.http_url + "/v2/health/live"
    if who == "plaintext":
        url = url.replace("https://", "http://")
        context = None
    else:
        context = ssl.create_default_context(cafile=str(secured.ca))
        if who == "certificate of another CA":
            context.load_cert_chain(str(secured.stranger.cert), str(secured.stranger.key))
    with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):
        urllib.request.urlopen(url, timeout=30, context=context).read()
    # The same client with the trusted certificate is answered.
    trusted = ssl.create_default_context(cafile=str(secured.ca))
    trusted.load_cert_chain(str(secured.client.cert), str(secured.client.key))
    assert urllib.request.urlopen(secured.server.http_url + "/v2/health/live", timeout=30, context=trusted).status == 200


def test_the_extensions_need_a_token_and_loading_a_model_its_scope(secured: Secured) -> None:  # noqa: F811
    connection = client(secured, secured.client)
    pair_only = {"Authorization": f"Bearer {PAIR_ONLY}"}
    calls = {
        "repository index": lambda headers: connection.get_model_repository_index(headers=headers),
        "shared memory status": lambda headers: connection.get_system_shared_memory_status(headers=headers),
        "cuda shared memory status": lambda headers: connection.get_cuda_shared_memory_status(headers=headers),
    }
    for name, call in calls.items():
        with pytest.raises(triton.InferenceServerException) as error:
            call(None)
        assert error.value.status() == "401", name
        call(pair_only)  # answered
    for call in (connection.load_model, connection.unload_model):
        with pytest.raises(triton.InferenceServerException) as error:
            call("example", headers=pair_only)
        assert error.value.status() == "403"
    # The token is checked before the request is: a bad registration from a stranger is 401, not 400.
    with pytest.raises(triton.InferenceServerException) as error:
        connection.register_system_shared_memory("region", "/no-such-segment", 64)
    assert error.value.status() == "401"
