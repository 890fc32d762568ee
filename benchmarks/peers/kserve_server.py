"""KServe's Python ModelServer with an ONNX Runtime model class, serving Open Inference Protocol v2 over gRPC and REST.

    .venv-bench-kserve/bin/python benchmarks/peers/kserve_server.py --model MODEL.onnx --name NAME --port PORT [--http-port PORT]

Runs in its own virtual environment (benchmarks/peers/kserve-requirements.txt: kserve pins
protobuf < 7). The model class is what KServe's docs show for a custom predictor: `load`
opens the session, `predict` takes the `InferRequest` KServe decoded from the gRPC message
and returns an `InferResponse` (numpy outputs, sent as raw_output_contents). ModelServer's
defaults otherwise: one worker, its latency logging, its REST server on --http-port (default: a free one).
"""

from __future__ import annotations

import argparse
import socket
import sys
import uuid


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--http-port", type=int, default=0, help="0: a free port")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # kserve.model_server parses sys.argv when imported

    import kserve
    from kserve import InferOutput, InferRequest, InferResponse
    from ortmodel import OrtModel, datatype

    class OrtPredictor(kserve.Model):
        def __init__(self, name: str, path: str, threads: int) -> None:
            super().__init__(name)
            self._path, self._threads = path, threads
            self.load()

        def load(self) -> bool:
            self._model = OrtModel(self._path, self._threads)
            self.ready = True
            return self.ready

        def predict(self, payload: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
            feeds = {tensor.name: tensor.as_numpy() for tensor in payload.inputs}
            outputs = [
                InferOutput(name=name, shape=list(array.shape), datatype=datatype(array), data=array)
                for name, array in zip(self._model.output_names, self._model.run(feeds))
            ]
            # A REST request need not carry an id; KServe's REST response must (as its own models do: a uuid).
            return InferResponse(response_id=payload.id or str(uuid.uuid4()), model_name=self.name, infer_outputs=outputs)

    model = OrtPredictor(args.name, args.model, args.threads)
    print(f"ready: 127.0.0.1:{args.port}", flush=True)  # the harness still waits for the port and a first answer
    kserve.ModelServer(http_port=args.http_port or free_port(), grpc_port=args.port, workers=1).start([model])


if __name__ == "__main__":
    main()
