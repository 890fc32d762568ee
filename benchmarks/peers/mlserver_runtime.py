"""MLServer's custom runtime for ONNX Runtime (MLServer ships no ONNX runtime of its own).

Loaded by `mlserver start DIR` in its own virtual environment
(benchmarks/peers/mlserver-requirements.txt), from DIR/model-settings.json:
`"implementation": "mlserver_runtime.OrtRuntime"`, `"parameters": {"uri": MODEL.onnx}`. The
harness writes DIR (settings.json: ports, parallel workers) and puts this folder on
PYTHONPATH. Inputs are decoded and outputs encoded with MLServer's NumpyCodec, as its docs
show for a custom runtime; raw requests get raw_output_contents back.
"""

from __future__ import annotations

import os

from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from ortmodel import OrtModel


class OrtRuntime(MLModel):
    async def load(self) -> bool:
        self._model = OrtModel(self.settings.parameters.uri, int(os.environ.get("BENCH_ORT_THREADS", "1")))
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {tensor.name: NumpyCodec.decode_input(tensor) for tensor in payload.inputs}
        outputs = self._model.run(feeds)
        return InferenceResponse(
            model_name=self.name,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(name, array) for name, array in zip(self._model.output_names, outputs)],
        )
