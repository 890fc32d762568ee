"""The rest of the service: liveness, readiness, metadata, grpc.health.v1 and reflection."""

from __future__ import annotations

import grpc
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from .serverproc import ServerProcess

SERVICE = "inference.GRPCInferenceService"


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.address)


def test_server_is_live_and_ready(client: triton.InferenceServerClient, server: ServerProcess) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert server.models == "example:1,pair:1|2,tuned:1"
    metadata = client.get_server_metadata()
    assert metadata.name == "quiver" and metadata.version


def test_model_readiness(client: triton.InferenceServerClient) -> None:
    assert client.is_model_ready("example")
    assert client.is_model_ready("pair", "1") and client.is_model_ready("pair", "2")
    assert not client.is_model_ready("pair", "3")
    assert not client.is_model_ready("nope")


def test_model_metadata_matches_the_models(client: triton.InferenceServerClient) -> None:
    def tensors(items: object) -> list[tuple[str, str, list[int]]]:
        return [(t.name, t.datatype, list(t.shape)) for t in items]

    example = client.get_model_metadata("example")
    assert (example.name, list(example.versions), example.platform) == ("example", ["1"], "onnxruntime_onnx")
    assert tensors(example.inputs) == [("input", "FP32", [-1, 64])]
    assert tensors(example.outputs) == [("output", "FP32", [-1, 10])]

    pair = client.get_model_metadata("pair", "1")
    assert list(pair.versions) == ["1", "2"]
    assert tensors(pair.inputs) == [("x", "FP32", [-1, 3]), ("k", "INT64", [-1, 2])]
    assert tensors(pair.outputs) == [("total", "FP32", [-1, 1]), ("looked_up", "INT64", [-1, 2])]

    with pytest.raises(triton.InferenceServerException) as error:
        client.get_model_metadata("nope")
    assert error.value.status() == "StatusCode.NOT_FOUND"


def test_health_service_reports_serving(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as error:
            health.Check(health_pb2.HealthCheckRequest(service="no.Such"), timeout=10)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_describes_the_service(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.address) as channel:
        reflection = ProtoReflectionDescriptorDatabase(channel)
        assert {SERVICE, "grpc.health.v1.Health"} <= set(reflection.get_services())
        service_file = reflection.FindFileContainingSymbol(SERVICE)
        methods = {method.name for method in service_file.service[0].method}
        assert methods == {
            "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
            # Triton's extensions
            "ModelConfig", "ModelStatistics", "ModelStreamInfer", "RepositoryIndex", "RepositoryModelLoad",
            "RepositoryModelUnload", "SystemSharedMemoryStatus", "SystemSharedMemoryRegister",
            "SystemSharedMemoryUnregister", "CudaSharedMemoryStatus", "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister",
        }
        # Triton's model configuration lives in a file of its own that reflection serves too.
        assert reflection.FindFileContainingSymbol("inference.ModelConfig").name.endswith("model_config.proto")
        assert {message.name for message in service_file.message_type} >= {"ModelInferRequest", "ModelInferResponse"}
