"""Graceful drain: on SIGTERM the router reports NOT_SERVING, finishes the requests it has
already accepted, refuses new ones, and exits 0."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc

from quiver.serving import Replicas, build_example, from_onnx_file, write_version

from .serverproc import quiver_serve


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
            accepted.wait(10)
            try:
                client.infer("example", [tensor], client_timeout=30)
                answers.append("OK")
            except triton.InferenceServerException as exc:
                answers.append(exc.status())

        threads = [threading.Thread(target=call) for _ in range(16)]
        for thread in threads:
            thread.start()
        accepted.wait(10)
        time.sleep(0.05)  # the 16 requests have reached the router
        server.process.send_signal(signal.SIGTERM)
        with grpc.insecure_channel(server.address) as channel:
            deadline = time.monotonic() + 5
            status = None
            while time.monotonic() < deadline and status != "not serving":
                try:
                    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                    status = "serving" if reply.status == health_pb2.HealthCheckResponse.SERVING else "not serving"
                except grpc.RpcError:
                    status = "not serving"  # the listener is already closed
        for thread in threads:
            thread.join(30)
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
    process = subprocess.Popen(
        [sys.executable, "-m", "quiver", "serve", str(tmp_path / "store"), "--num-cpus", "1", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    output: list[str] = []
    try:
        for line in process.stdout:  # the router listens, then waits for its variant
            output.append(line)
            if "no --token-file" in line:
                break
        time.sleep(2)
        assert process.poll() is None, "".join(output)
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(30)
        except subprocess.TimeoutExpired:
            code = None
    finally:
        process.kill()
    log = "".join(output) + process.stdout.read()
    assert code == 0, f"exit status {code} (None: still running 30 s after SIGTERM):\n{log}"
    assert "stopping before every variant was ready" in log and "ready: " not in log, log
