"""Graceful drain: on SIGTERM the router reports NOT_SERVING, finishes the requests it has
already accepted, refuses new ones, and exits 0."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from quiver.serving import Replicas, build_example, from_onnx_file, write_version

from .serverproc import ServerProcess, quiver_serve


def dispatched(server: ServerProcess, model: str) -> int:
    """How many of `model`'s requests the router has sent to a replica (its routing decisions)."""
    text = urllib.request.urlopen(server.metrics_url, timeout=30).read().decode()
    return sum(
        int(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "quiver_routing_decisions_total" and sample.labels.get("model") == model
    )


def test_sigterm_finishes_accepted_requests_then_exits(tmp_path: Path) -> None:
    signature = from_onnx_file(build_example(tmp_path / "store/example/1/model.onnx")).manifest
    # One row per batch makes a queue: requests are still in flight when SIGTERM arrives.
    variant = signature.variants[0].model_copy(update={"replicas": Replicas(num_cpus=0.5)})
    variant = variant.model_copy(update={"batching": variant.batching.model_copy(update={"max_batch_size": 1})})
    write_version(tmp_path / "store", signature.model_copy(update={"name": "example", "variants": [variant]}))
    x = np.ones((1, 64), np.float32)
    with quiver_serve(str(tmp_path / "store")) as server:
        client = triton.InferenceServerClient(server.address)
        answers: list[str] = []
        accepted = threading.Barrier(17)

        def call() -> None:
            tensor = triton.InferInput("input", [1, 64], "FP32")
            tensor.set_data_from_numpy(x)
            accepted.wait(60)
            try:
                client.infer("example", [tensor], client_timeout=60)
                answers.append("OK")
            except triton.InferenceServerException as exc:
                answers.append(exc.status())

        threads = [threading.Thread(target=call) for _ in range(16)]
        for thread in threads:
            thread.start()
        accepted.wait(60)
        deadline = time.monotonic() + 60
        while (sent := dispatched(server, "example")) < 16:  # the 16 requests have reached the router
            assert time.monotonic() < deadline, f"the router dispatched {sent} of 16 requests within 60 s:\n{server.own_log()[-3000:]}"
            time.sleep(0.02)
        server.process.send_signal(signal.SIGTERM)
        with grpc.insecure_channel(server.address) as channel:
            deadline = time.monotonic() + 30
            status = None
            while time.monotonic() < deadline and status != "not serving":
                try:
                    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
                    status = "serving" if reply.status == health_pb2.HealthCheckResponse.SERVING else "not serving"
                except grpc.RpcError as error:
                    if error.code() == grpc.StatusCode.UNAVAILABLE:
                        status = "not serving"  # the listener is already closed
        for thread in threads:
            thread.join(60)
        assert status == "not serving"
        assert answers == ["OK"] * 16, (answers, server.log()[-3000:])
        server.process.wait(60)
        assert server.process.returncode == 0


def test_sigterm_while_waiting_for_variants_stops_at_once(tmp_path: Path) -> None:
    """A pod deleted while it starts: the router does not wait out its ready timeout first."""
    signature = from_onnx_file(build_example(tmp_path / "store/example/1/model.onnx")).manifest
    # Two CPUs a replica on a one-CPU instance: it is never placed, so the router keeps waiting.
    variant = signature.variants[0].model_copy(update={"replicas": Replicas(num_cpus=2)})
    write_version(tmp_path / "store", signature.model_copy(update={"name": "example", "variants": [variant]}))
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{'t' * 24} *\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "quiver", "serve", str(tmp_path / "store"), "--num-cpus", "1", "--port", "0", "--http-port", "0",
         "--token-file", str(tokens), "--log-level", "INFO"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    output: list[str] = []

    def read_until(text: str) -> None:
        for line in process.stdout:
            output.append(line)
            if text in line:
                return

    try:
        # The router takes SIGTERM itself from the step of its event loop that logs "router
        # listening" on (quiver/lifecycle.py: its signal handlers follow in that step); a SIGTERM
        # before that would end it at once. A change to its token file made after that line is
        # read in a later step: once the router says it read it, its handlers are in place.
        read_until("router listening on")
        tokens.write_text(f"{'u' * 24} *\n# rotated\n")
        read_until(f"token file {tokens} loaded")
        assert process.poll() is None, "".join(output)
        process.send_signal(signal.SIGTERM)
        try:
            # Generous, for a busy machine; far below the 300 s the router would wait for its variant.
            # That it did not wait is said by its log below, not by this bound.
            code = process.wait(120)
        except subprocess.TimeoutExpired:
            code = None
    finally:
        process.kill()
    log = "".join(output) + process.stdout.read()
    assert code == 0, f"exit status {code} (None: still running 120 s after SIGTERM):\n{log}"
    assert "stopping before every variant was ready" in log, log
    assert not [line for line in log.splitlines() if line.startswith("ready: ")], log
