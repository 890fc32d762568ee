"""End to end through a stock client: tritonclient → router → Ray Serve replica → ONNX Runtime."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from prometheus_client.parser import text_string_to_metric_families

from quiver.serving import Batching, Replicas, build_example, from_onnx_file, read_version, write_version

from .models import PAIR_TABLE, reference
from .serverproc import ServerProcess, quiver_serve


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.address)


def example_input(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 64)).astype(np.float32)


def infer_example(client: triton.InferenceServerClient, x: np.ndarray) -> triton.InferResult:
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer("example", [tensor])


def parameters(result: triton.InferResult) -> dict[str, object]:
    return {key: getattr(value, value.WhichOneof("parameter_choice")) for key, value in result.get_response().parameters.items()}


@pytest.mark.parametrize("rows", [1, 4, 17, 64])
def test_example_matches_onnxruntime(client: triton.InferenceServerClient, store: Path, rows: int) -> None:
    x = example_input(rows, seed=rows)
    result = infer_example(client, x)
    expected = reference(store / "example/1/model.onnx", {"input": x})["output"]
    assert result.as_numpy("output").shape == (rows, 10)
    np.testing.assert_allclose(result.as_numpy("output"), expected, rtol=0, atol=1e-5)
    assert parameters(result) | {"quiver.batch_rows": 0, "quiver.batch_requests": 0} == {
        "quiver.variant": "fp32",
        "quiver.version": "1",
        "quiver.pool": "cpu",
        "quiver.reason": "default",
        "quiver.batch_rows": 0,
        "quiver.batch_requests": 0,
    }


def pair_inputs(rows: int, k: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], list[triton.InferInput]]:
    feeds = {
        "x": np.arange(rows * 3, dtype=np.float32).reshape(rows, 3),
        "k": np.arange(rows * 2, dtype=np.int64).reshape(rows, 2) % len(PAIR_TABLE) if k is None else k,
    }
    tensors = []
    for name, datatype in (("x", "FP32"), ("k", "INT64")):
        tensor = triton.InferInput(name, list(feeds[name].shape), datatype)
        tensor.set_data_from_numpy(feeds[name])
        tensors.append(tensor)
    return feeds, tensors


def test_two_outputs_in_requested_order(client: triton.InferenceServerClient, store: Path) -> None:
    feeds, tensors = pair_inputs(5)
    expected = reference(store / "pair/2/model.onnx", feeds)
    requested = [triton.InferRequestedOutput("looked_up"), triton.InferRequestedOutput("total")]
    response = client.infer("pair", tensors, outputs=requested).get_response()
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("looked_up", "INT64", [5, 2]),
        ("total", "FP32", [5, 1]),
    ]
    result = triton.InferResult(response)
    np.testing.assert_array_equal(result.as_numpy("looked_up"), expected["looked_up"])
    np.testing.assert_allclose(result.as_numpy("total"), expected["total"], rtol=0, atol=1e-5)


def test_output_selection_and_default_order(client: triton.InferenceServerClient) -> None:
    _, tensors = pair_inputs(2)
    only = client.infer("pair", tensors, outputs=[triton.InferRequestedOutput("total")]).get_response()
    assert [o.name for o in only.outputs] == ["total"] and len(only.raw_output_contents) == 1
    every = client.infer("pair", tensors).get_response()
    assert [o.name for o in every.outputs] == ["total", "looked_up"]


def test_versions_resolve_to_newest_or_the_one_asked(client: triton.InferenceServerClient) -> None:
    _, tensors = pair_inputs(1)
    assert client.infer("pair", tensors).get_response().model_version == "2"
    assert client.infer("pair", tensors, model_version="1").get_response().model_version == "1"


def test_request_id_is_echoed(client: triton.InferenceServerClient) -> None:
    tensor = triton.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(example_input(1))
    assert client.infer("example", [tensor], request_id="req-42").get_response().id == "req-42"


def test_concurrent_requests_are_all_answered_and_batched(client: triton.InferenceServerClient, store: Path) -> None:
    inputs = [example_input(1 + i % 4, seed=i) for i in range(200)]
    expected = [reference(store / "example/1/model.onnx", {"input": x})["output"] for x in inputs]

    def call(x: np.ndarray) -> triton.InferResult:
        return infer_example(client, x)

    # tritonclient's channel is shared: 16 threads keep up to 16 requests in flight at once.
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, inputs))
    for result, want in zip(results, expected):
        np.testing.assert_allclose(result.as_numpy("output"), want, rtol=0, atol=1e-5)
    batch_sizes = [parameters(result)["quiver.batch_requests"] for result in results]
    assert max(batch_sizes) > 1, f"the replica never joined requests: {batch_sizes}"


def test_a_request_the_model_rejects_fails_alone_under_load(client: triton.InferenceServerClient, store: Path) -> None:
    bad_k = np.array([[0, 999]], dtype=np.int64)  # 999 is outside the lookup table

    def call(i: int) -> str:
        feeds, tensors = pair_inputs(1, k=bad_k if i % 5 == 0 else None)
        try:
            result = client.infer("pair", tensors)
        except triton.InferenceServerException as exc:
            return exc.status()
        expected = reference(store / "pair/2/model.onnx", feeds)
        np.testing.assert_array_equal(result.as_numpy("looked_up"), expected["looked_up"])
        return "OK"

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(call, range(100)))
    assert statuses == ["StatusCode.INVALID_ARGUMENT" if i % 5 == 0 else "OK" for i in range(100)]


@pytest.mark.parametrize("variant", ["fp32", "fp16", "int8-static"])
def test_every_published_variant_is_served(client: triton.InferenceServerClient, store: Path, variant: str) -> None:
    version = read_version(store / "tuned/1")
    chosen = version.manifest.variant(variant)
    x = example_input(8, seed=21)
    tensor = triton.InferInput("input", [8, 64], "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("tuned", [tensor], parameters={"quiver.variant": variant})
    said = parameters(result)
    assert (said["quiver.variant"], said["quiver.pool"], said["quiver.reason"]) == (variant, chosen.pool, "pinned")
    expected = reference(version.path(chosen), {"input": x})["output"]
    np.testing.assert_allclose(result.as_numpy("output"), expected, rtol=0, atol=1e-5)


def test_the_default_variant_answers_without_a_hint(client: triton.InferenceServerClient) -> None:
    tensor = triton.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(example_input(1))
    assert parameters(client.infer("tuned", [tensor]))["quiver.variant"] == "fp32"


@pytest.mark.parametrize(
    ("hints", "variants", "reason"),
    [
        ({"quiver.precision": "int8"}, {"int8-static"}, "most-accurate"),
        ({"quiver.pool": "gpu"}, {"fp16"}, "most-accurate"),
        ({"quiver.min_accuracy": 1}, {"fp32"}, "default"),
        # fp32 and fp16 are equally accurate: the faster of the two, as measured live.
        ({"quiver.latency_budget_ms": "10000"}, {"fp32", "fp16"}, "budget"),
    ],
)
def test_routing_hints_choose_the_variant(
    client: triton.InferenceServerClient, hints: dict, variants: set[str], reason: str
) -> None:
    tensor = triton.InferInput("input", [2, 64], "FP32")
    tensor.set_data_from_numpy(example_input(2))
    said = parameters(client.infer("tuned", [tensor], parameters=hints))
    assert said["quiver.variant"] in variants and said["quiver.reason"] == reason


@pytest.mark.parametrize(
    ("hints", "status", "message"),
    [
        ({"quiver.pool": "tpu"}, "StatusCode.FAILED_PRECONDITION", "no variant meets quiver.pool=tpu"),
        ({"quiver.precision": "fp64"}, "StatusCode.INVALID_ARGUMENT", "'fp64' is not one of"),
        ({"quiver.min_accuracy": "high"}, "StatusCode.INVALID_ARGUMENT", "must be a number"),
    ],
)
def test_hints_no_variant_can_meet_are_refused(client: triton.InferenceServerClient, hints: dict, status: str, message: str) -> None:
    tensor = triton.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(example_input(1))
    with pytest.raises(triton.InferenceServerException) as error:
        client.infer("tuned", [tensor], parameters=hints)
    assert error.value.status() == status and message in error.value.message()


def test_prometheus_metrics_count_requests_and_decisions(client: triton.InferenceServerClient, server: ServerProcess) -> None:
    tensor = triton.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(example_input(1))
    client.infer("tuned", [tensor], parameters={"quiver.variant": "int8-static"})
    with pytest.raises(triton.InferenceServerException):
        client.infer("nope", [tensor])
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    assert 'quiver_requests_total{code="OK",model="tuned",pool="cpu",protocol="grpc",variant="int8-static",version="1"}' in text
    assert 'quiver_routing_decisions_total{model="tuned",pool="cpu",reason="pinned",variant="int8-static",version="1"}' in text
    assert 'quiver_rejected_requests_total{code="NOT_FOUND",model="nope",protocol="grpc"}' in text
    assert 'quiver_batch_requests_bucket{le="1.0",model="tuned"' in text
    # What it knows of the variant's replicas, and the weight `quiver serve` gives tuned's only version.
    assert 'quiver_variant_ready{model="tuned",pool="cpu",variant="int8-static",version="1"} 1.0' in text
    assert 'quiver_variant_replicas{model="tuned",pool="cpu",variant="int8-static",version="1"} 1.0' in text
    assert 'quiver_probe_failures_total{model="tuned",pool="cpu",variant="int8-static",version="1"}' in text
    assert "quiver_replica_directory_up 1.0" in text
    assert 'quiver_route_weight{model="tuned",version="1"} 100.0' in text
    # The replica's queueing and ONNX Runtime time, observed with every answered request, lie within its latency.
    samples = {
        (sample.name, sample.labels["model"], sample.labels["variant"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if "variant" in sample.labels
    }
    key = ("tuned", "int8-static")
    answered = samples[("quiver_request_latency_seconds_count", *key)]
    assert answered >= 1
    assert samples[("quiver_replica_queue_seconds_count", *key)] == samples[("quiver_replica_compute_seconds_count", *key)] == answered
    queue, compute = samples[("quiver_replica_queue_seconds_sum", *key)], samples[("quiver_replica_compute_seconds_sum", *key)]
    assert 0 < compute and 0 <= queue and queue + compute < samples[("quiver_request_latency_seconds_sum", *key)]


def wait_for_route_weights(server: ServerProcess, model: str, expected: dict[str, float]) -> None:
    """Until quiver_route_weight of `model`'s versions, as `quiver serve` exports them, is `expected`
    (the router reads its split every 0.25 s)."""
    deadline = time.monotonic() + 30
    while True:
        text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
        exported = {
            sample.labels["version"]: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "quiver_route_weight" and sample.labels["model"] == model
        }
        if exported == expected:
            return
        assert time.monotonic() < deadline, f"{model}'s weights {exported}, not {expected}"
        time.sleep(0.05)


def test_a_new_traffic_split_takes_effect_under_load_and_no_request_fails(
    client: triton.InferenceServerClient, traffic_file: Path, server: ServerProcess
) -> None:
    _, tensors = pair_inputs(1)
    answers: list[tuple[float, float, str]] = []  # (time sent, time answered, version or status)
    stop = threading.Event()

    def load() -> None:
        for _ in range(100_000):  # bounded; stopped sooner
            if stop.is_set():
                return
            sent = time.monotonic()
            try:
                answers.append((sent, time.monotonic(), client.infer("pair", tensors).get_response().model_version))
            except triton.InferenceServerException as exc:
                answers.append((sent, time.monotonic(), exc.status()))

    def switched(version: str, since: float) -> float:
        """When the first answer from `version` to a request sent after `since` came back."""
        deadline = time.monotonic() + 60
        while not (seen := [done for sent, done, answer in list(answers) if sent > since and answer == version]):
            assert time.monotonic() < deadline, f"no answer from version {version} within 60 s of the change"
            time.sleep(0.05)
        return min(seen)

    def answered_after(t: float, count: int = 20) -> list[str]:
        deadline = time.monotonic() + 60
        while len(after := [answer for sent, _, answer in list(answers) if sent > t]) < count:
            assert time.monotonic() < deadline, f"fewer than {count} answers within 60 s: {after}"
            time.sleep(0.05)
        return after

    wait_for_route_weights(server, "pair", {"1": 0.0, "2": 100.0})  # no weights in the file: all to the newest
    threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
    try:
        for thread in threads:
            thread.start()
        # Unnamed, pair goes to its newest version (2); each change moves it all, and once one
        # request has been answered by the new split, every request sent after that is too.
        for version, weights in (("1", {"1": 100}), ("2", {"1": 0, "2": 100})):
            changed = time.monotonic()
            traffic_file.write_text(json.dumps({"models": {"pair": weights}}))
            taken = switched(version, changed)
            assert set(answered_after(taken)) == {version}
            wait_for_route_weights(server, "pair", {"1": 0.0, "2": 0.0, **{v: float(w) for v, w in weights.items()}})
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        traffic_file.write_text('{"models": {}}')
    assert {answer for _, _, answer in answers} <= {"1", "2"}, "a request failed while the split changed"


@pytest.mark.timeout(300)
def test_a_deadline_that_passes_while_a_request_waits_in_the_server_is_the_servers_to_enforce(tmp_path: Path) -> None:
    """The replica's batches wait 8 s for more rows: a request with a 2 s deadline expires while it
    waits in the server, whatever the load, and the router answers it DEADLINE_EXCEEDED and counts it so.

    The status alone would not say whose doing that was: tritonclient's own timer fires at the
    same instant (gRPC gives both ends one deadline), so the router's own count is checked too.
    """
    source = from_onnx_file(build_example(tmp_path / "store/slow/1/model.onnx")).manifest
    waiting = Batching(max_batch_size=65536, max_wait_ms=8000)
    variant = source.variants[0].model_copy(update={"replicas": Replicas(num_cpus=0.25), "batching": waiting})
    write_version(tmp_path / "store", source.model_copy(update={"name": "slow", "variants": [variant]}))
    with quiver_serve(str(tmp_path / "store")) as server:
        slow = triton.InferenceServerClient(server.address)
        tensor = triton.InferInput("input", [1, 64], "FP32")
        tensor.set_data_from_numpy(example_input(1))

        def with_deadline(seconds: float) -> str:
            try:
                slow.infer("slow", [tensor], client_timeout=seconds)
            except triton.InferenceServerException as exc:
                return exc.status()
            return "OK"

        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(with_deadline, [2.0] * 4)) == ["StatusCode.DEADLINE_EXCEEDED"] * 4

        def finished_in_the_router() -> Counter:
            """The router's count of slow's requests by status (dispatched, or expired before it was read)."""
            text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
            counted: Counter = Counter()
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name in ("quiver_requests_total", "quiver_rejected_requests_total") and sample.labels.get("model") == "slow":
                        counted[sample.labels["code"]] += int(sample.value)
            return counted

        deadline = time.monotonic() + 60
        while sum(finished_in_the_router().values()) < 4:
            assert time.monotonic() < deadline, f"the router finished {dict(finished_in_the_router())} of 4:\n{server.own_log()[-4000:]}"
            time.sleep(0.2)
        counted = finished_in_the_router()
        assert sum(counted.values()) == 4 and "OK" not in counted, counted
        # The server serves on: a request with time to wait out the batch is answered.
        assert with_deadline(60) == "OK"
        # Whichever timer fired first, the router's or the client's (which has gRPC cancel the call), each is counted expired.
        assert counted == {"DEADLINE_EXCEEDED": 4}, counted
