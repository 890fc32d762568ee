"""ModelInfer over an ONNX Runtime session with Quiver's generated v2 messages: the whole
request path of the plain gRPC server and of the Ray Serve ingress, and nothing more.

raw_input_contents in, raw_output_contents out, every output in the model's order; no
validation beyond what numpy and ONNX Runtime do (these are yardsticks, not products).
"""

from __future__ import annotations

import numpy as np
from ortmodel import DTYPES, OrtModel, datatype

from quiver._proto import grpc_predict_v2_pb2 as pb


def infer(model: OrtModel, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
    feeds = {
        spec.name: np.frombuffer(raw, DTYPES[spec.datatype]).reshape(spec.shape)
        for spec, raw in zip(request.inputs, request.raw_input_contents)
    }
    outputs = model.run(feeds)
    return pb.ModelInferResponse(
        model_name=request.model_name,
        id=request.id,
        outputs=[
            pb.ModelInferResponse.InferOutputTensor(name=name, datatype=datatype(array), shape=array.shape)
            for name, array in zip(model.output_names, outputs)
        ],
        raw_output_contents=[array.tobytes() for array in outputs],
    )
