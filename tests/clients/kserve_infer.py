"""Run one inference with KServe's Python client, gRPC or REST; started by the tests in its own venv.

usage: kserve_infer.py ADDRESS MODEL INPUT_NAME IN.npy OUT.npy {raw,typed} [{grpc,rest}]
ADDRESS is host:port of the transport's door. Prints the response's model version and
parameters as JSON (over REST, whether the server and the model say they are ready, too).
"""

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig


async def main(address: str, model: str, input_name: str, source: str, target: str, encoding: str, transport: str = "grpc") -> None:
    x = np.load(source)
    tensor = InferInput(name=input_name, shape=list(x.shape), datatype="FP32")
    tensor.set_data_from_numpy(x, binary_data=encoding == "raw")
    request = InferRequest(model_name=model, infer_inputs=[tensor])
    ready = {}
    if transport == "rest":
        url = f"http://{address}"
        async with InferenceRESTClient(RESTConfig(protocol="v2", timeout=30)) as client:
            ready = {"server_ready": await client.is_server_ready(url), "model_ready": await client.is_model_ready(url, model)}
            response = await client.infer(url, request, model_name=model)
    else:
        client = InferenceGRPCClient(address, timeout=30)
        try:
            response = await client.infer(request)
        finally:
            await client.close()
    np.save(target, response.outputs[0].as_numpy())
    parameters = {
        key: value if not hasattr(value, "WhichOneof") else getattr(value, value.WhichOneof("parameter_choice"))
        for key, value in (response.parameters or {}).items()
    }
    print(json.dumps({"model_version": response.model_version, "parameters": parameters, **ready}))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
