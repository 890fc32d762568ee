"""Triton Inference Server through PyTriton: a Python callable running the ONNX Runtime session, over gRPC and REST.

    .venv-bench-pytriton/bin/python benchmarks/peers/pytriton_server.py --model MODEL.onnx --name NAME \
        --grpc-port PORT --http-port PORT --metrics-port PORT --workspace DIR

Runs in its own virtual environment on Python 3.12 (benchmarks/peers/pytriton-requirements.txt).
PyTriton starts the `tritonserver` its wheel carries; Triton's Python backend stub relays each
batch to the callable in this process. Batching as Quiver's replicas do: Triton's dynamic
batcher (no queue delay) up to 64 rows, the callable runs them in one ORT call. Triton's
defaults otherwise. The stub links libpython3.12.so, which the wheel does not carry: it is
found through LD_LIBRARY_PATH at this interpreter's LIBDIR.
"""

from __future__ import annotations

import argparse
import os
import sysconfig

import numpy as np

ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
             "tensor(bool)": np.bool_}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-batch", type=int, default=64, help="Quiver's default max_batch_size")
    parser.add_argument("--workspace", required=True)
    args = parser.parse_args()
    # Before Triton starts: tritonserver and its stub inherit this environment.
    os.environ["LD_LIBRARY_PATH"] = ":".join(filter(None, (sysconfig.get_config_var("LIBDIR"), os.environ.get("LD_LIBRARY_PATH"))))

    from ortmodel import OrtModel
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    model = OrtModel(args.model, args.threads)

    def tensors(specs: list) -> list[Tensor]:
        # Batching: Triton's shapes leave out the first (batch) dimension; named dimensions are dynamic.
        return [Tensor(name=spec.name, dtype=ORT_TYPES[spec.type],
                       shape=tuple(d if isinstance(d, int) else -1 for d in spec.shape[1:]))
                for spec in specs]

    @batch
    def infer(**feeds: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(model.output_names, model.run(feeds)))

    config = TritonConfig(http_address="127.0.0.1", http_port=args.http_port, grpc_address="127.0.0.1",
                          grpc_port=args.grpc_port, metrics_address="127.0.0.1", metrics_port=args.metrics_port,
                          allow_gpu_metrics=False)
    with Triton(config=config, workspace=args.workspace) as triton:
        triton.bind(model_name=args.name, infer_func=infer, inputs=tensors(model.session.get_inputs()),
                    outputs=tensors(model.session.get_outputs()),
                    config=ModelConfig(max_batch_size=args.max_batch, batcher=DynamicBatcher()))
        print(f"ready: 127.0.0.1:{args.grpc_port} http=http://127.0.0.1:{args.http_port}", flush=True)
        triton.serve()


if __name__ == "__main__":
    main()
