"""Run one inference with KServe's Python gRPC client; started by the tests in its own venv.

usage: kserve_infer.py ADDRESS MODEL INPUT_NAME IN.npy OUT.npy {raw,typed}
Prints the response's model version and parameters as JSON.
"""

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest


async def main(address: str, model: str, input_name: str, source: str, target: str, encoding: str) -> None:
    x = np.load(source)
    tensor = InferInput(name=input_name, shape=list(x.shape), datatype="FP32")
    tensor.set_data_from_numpy(x, binary_data=encoding == "raw")
    client = InferenceGRPCClient(address, timeout=30)
    try:
        response = await client.infer(InferRequest(model_name=model, infer_inputs=[tensor]))
    finally:
        await client.close()
    np.save(target, response.outputs[0].as_numpy())
    parameters = {key: getattr(value, value.WhichOneof("parameter_choice")) for key, value in (response.parameters or {}).items()}
    print(json.dumps({"model_version": response.model_version, "parameters": parameters}))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
