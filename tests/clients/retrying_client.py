"""A client as users configure one: gRPC retries on UNAVAILABLE, wait-for-ready and health checking, from a service config.

usage: retrying_client.py ADDRESS MODEL [THREADS]
Sends `ModelInfer` (the example model's input, one row) from THREADS threads, one request after
another with a short pause, until its standard input closes (at most 180 s), waits for the
requests in flight, then prints one JSON line: sent, and answers by status ("OK" or the
status name), and the time of the first and last failure if any. Runs in its own process, as
a user's client does.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter

import grpc
import numpy as np

from quiver._proto import grpc_predict_v2_pb2 as pb
from quiver._proto import grpc_predict_v2_pb2_grpc as pb_grpc

# gRPC retries an RPC that failed UNAVAILABLE (the server went away, or refused while
# draining) with backoff, and waitForReady makes a call made while no server listens wait for
# one instead of failing at once; the timeout bounds each call, retries included.
# Client-side health checking (round_robin watches grpc.health.v1 for the server, "") stops
# sending on a connection once the router turns NOT_SERVING at the start of its drain. Without
# it, a call that reaches the router in the instant its gRPC server stops is answered CANCELLED
# (gRPC core ends calls not yet handed to the application that way, grpc/grpc#41785), which
# no retry policy retries: seen once in ~800 requests, in about one run in ten.
SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": ""},
    "methodConfig": [{
        "name": [{"service": "inference.GRPCInferenceService"}],
        "waitForReady": True,
        "timeout": "30s",
        "retryPolicy": {
            "maxAttempts": 5,
            "initialBackoff": "0.1s",
            "maxBackoff": "2s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }]
}


def main(address: str, model: str, threads: int = 4) -> None:
    channel = grpc.insecure_channel(
        address, options=[("grpc.enable_retries", 1), ("grpc.service_config", json.dumps(SERVICE_CONFIG))]
    )
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    request = pb.ModelInferRequest(
        model_name=model,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 64])],
        raw_input_contents=[np.ones((1, 64), np.float32).tobytes()],
    )
    outcomes: Counter[str] = Counter()
    failures: list[float] = []
    sent = 0
    lock = threading.Lock()
    stop = threading.Event()
    start = time.monotonic()

    def run() -> None:
        nonlocal sent
        while not stop.is_set() and time.monotonic() - start < 180:
            with lock:
                sent += 1
            try:
                stub.ModelInfer(request)
                status = "OK"
            except grpc.RpcError as exc:
                status = exc.code().name
                with lock:
                    failures.append(round(time.monotonic() - start, 2))
            with lock:
                outcomes[status] += 1
            time.sleep(0.005)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    print(json.dumps({"started": True}), flush=True)
    sys.stdin.read()  # the test closes it when it is done
    stop.set()
    for worker in workers:
        worker.join()
    channel.close()
    print(json.dumps({"sent": sent, "answers": dict(outcomes), "failures_at": failures[:20]}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *map(int, sys.argv[3:]))
