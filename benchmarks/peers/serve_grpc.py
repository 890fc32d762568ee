"""What a Ray user would write instead of Quiver: Serve's own gRPC proxy in front of an ingress
deployment that implements the v2 `GRPCInferenceService.ModelInfer` around an ONNX Runtime session.

    python benchmarks/peers/serve_grpc.py --model MODEL.onnx --port PORT [--num-cpus 1]

A local Ray instance with `--num-cpus` CPUs; Serve's gRPC proxy on PORT (its HTTP proxy on a
free port nobody uses), registered with the servicer function of Quiver's generated stubs, so
the proxy parses the same messages. The deployment keeps Serve's defaults (one replica,
`max_ongoing_requests`, access logging) except the CPU it reserves; its method is a plain
`def`, which Serve runs off the replica's event loop. SIGTERM shuts Serve and Ray down.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading

import ray
from ortmodel import OrtModel
from ray import serve
from v2infer import infer

from quiver._proto import grpc_predict_v2_pb2 as pb

SERVICER = "quiver._proto.grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server"


@serve.deployment
class OrtIngress:
    def __init__(self, model: str, threads: int) -> None:
        self._model = OrtModel(model, threads)

    def ModelInfer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:  # the gRPC method's name
        return infer(self._model, request)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--num-cpus", type=float, default=1)
    parser.add_argument("--max-ongoing-requests", type=int, default=None, help="default: Serve's")
    args = parser.parse_args()

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    serve.start(
        http_options={"host": "127.0.0.1", "port": free_port()},
        grpc_options={"port": args.port, "grpc_servicer_functions": [SERVICER]},
    )
    options: dict[str, object] = {"ray_actor_options": {"num_cpus": args.num_cpus}}
    if args.max_ongoing_requests:
        options["max_ongoing_requests"] = args.max_ongoing_requests
    serve.run(OrtIngress.options(**options).bind(args.model, max(1, int(args.num_cpus))), name="model")

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"ready: 127.0.0.1:{args.port}", flush=True)
    stop.wait()
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
