"""tritonclient's asyncio clients, grpc.aio and http.aio, against the session's `quiver serve`:
metadata, configuration, statistics, the repository index, shared memory and concurrent
inference, each answer checked (results against ONNX Runtime run directly).
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc.aio as grpc_aio
from google.protobuf.json_format import MessageToDict
import tritonclient.http.aio as http_aio
import tritonclient.utils.shared_memory as shm

from .models import reference
from .serverproc import ServerProcess

ROWS = 4


def client_for(kind: str, server: ServerProcess) -> object:
    if kind == "grpc":
        return grpc_aio.InferenceServerClient(server.address)
    return http_aio.InferenceServerClient(server.http_url.removeprefix("http://"))


def module(kind: str) -> object:
    return grpc_aio if kind == "grpc" else http_aio


def as_dict(kind: str, answer: object) -> object:
    """Either client's answer in one form: http.aio answers JSON, grpc.aio protobuf messages (uint64 as strings)."""
    return answer if kind == "http" else MessageToDict(answer, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


@pytest.mark.parametrize("kind", ["grpc", "http"])
def test_every_call_through_the_asyncio_client(kind: str, server: ServerProcess, store: Path) -> None:
    triton = module(kind)
    features = [np.random.default_rng(seed).standard_normal((ROWS, 64)).astype(np.float32) for seed in range(8)]
    key = f"/quiver-aio-{uuid.uuid4().hex[:12]}"
    handle = shm.create_shared_memory_region(key.lstrip("/"), key, features[0].nbytes)
    shm.set_shared_memory_region(handle, [features[0]])

    async def run() -> list[np.ndarray]:
        client = client_for(kind, server)
        try:
            assert await client.is_server_live() and await client.is_model_ready("example")
            metadata = as_dict(kind, await client.get_server_metadata())
            assert metadata["name"] == "quiver" and "system_shared_memory" in metadata["extensions"]
            config = as_dict(kind, await client.get_model_config("example"))
            config = config.get("config", config)  # gRPC wraps it in ModelConfigResponse
            assert config["name"] == "example" and int(config["max_batch_size"]) > 0
            index = as_dict(kind, await client.get_model_repository_index())
            index = index.get("models", index) if isinstance(index, dict) else index
            assert {"name": "example", "version": "1", "state": "READY"} in [
                {k: entry[k] for k in ("name", "version", "state")} for entry in index
            ]
            before = as_dict(kind, await client.get_inference_statistics("example", "1"))["model_stats"][0]

            async def one(array: np.ndarray, in_region: bool) -> np.ndarray:
                tensor = triton.InferInput("input", list(array.shape), "FP32")
                if in_region:
                    tensor.set_shared_memory("aio", array.nbytes)
                else:
                    tensor.set_data_from_numpy(array)
                return (await client.infer("example", [tensor])).as_numpy("output")

            await client.register_system_shared_memory("aio", key, features[0].nbytes)
            try:
                answers = await asyncio.gather(*(one(array, index == 0) for index, array in enumerate(features)))
            finally:
                await client.unregister_system_shared_memory("aio")
            after = as_dict(kind, await client.get_inference_statistics("example", "1"))["model_stats"][0]
            grown = int(after["inference_stats"]["success"]["count"]) - int(before["inference_stats"]["success"]["count"])
            assert grown >= len(features)  # other tests' requests may add to it, never take away
            return answers
        finally:
            await client.close()

    try:
        answers = asyncio.run(asyncio.wait_for(run(), 120))
    finally:
        shm.destroy_shared_memory_region(handle)
    model = store / "example" / "1" / "model.onnx"
    for array, answer in zip(features, answers):
        np.testing.assert_allclose(answer, reference(model, {"input": array})["output"], rtol=1e-5, atol=1e-6)
