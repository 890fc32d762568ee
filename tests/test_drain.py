"""Graceful drain: on SIGTERM the router reports NOT_SERVING, finishes the requests it has
already accepted, refuses new ones, and exits 0."""

from __future__ import annotations

import signal
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
