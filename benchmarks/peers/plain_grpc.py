"""The plain yardstick: one grpc.aio process, ModelInfer straight into ONNX Runtime.

    python benchmarks/peers/plain_grpc.py --model MODEL.onnx --port PORT

No hop, no batching, no validation: what any v2 server must pay for gRPC alone. ONNX Runtime
runs on the event loop's thread (it is short for small models, and the server has one CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc
from ortmodel import OrtModel
from v2infer import infer

from quiver._proto import grpc_predict_v2_pb2 as pb
from quiver._proto import grpc_predict_v2_pb2_grpc as pb_grpc


class Servicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, model: OrtModel) -> None:
        self._model = model

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        return infer(self._model, request)


async def serve(model: OrtModel, host: str, port: int) -> None:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(model), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"ready: {host}:{bound}", flush=True)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(serve(OrtModel(args.model, args.threads), args.host, args.port))


if __name__ == "__main__":
    main()
