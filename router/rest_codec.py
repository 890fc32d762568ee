"""Open Inference Protocol REST bodies (KServe v2 / Triton JSON) ↔ the protocol operations' typed values (router/operations.py).

Inputs travel as JSON `data` (flat or nested row-major lists) or, with Triton's binary tensor
data extension, as raw bytes after the JSON: the `Inference-Header-Content-Length` header says
where the JSON ends, each binary input's `binary_data_size` parameter how many bytes are its.
Outputs are JSON `data` unless asked for as binary (an output's `binary_data` parameter, or the
request's `binary_data_output` for every output), then they follow the JSON the same way.
A tensor whose parameters name a shared memory region (router/shared_memory.py) has no bytes here.
Triton's model configuration and statistics are written as Triton writes them (its proto field names).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from quiver.serving import TensorSpec

from . import shared_memory
from .operations import InferAnswer, InferRequest, ModelMetadata, ServerMetadata
from .errors import InvalidArgument
from .modelconfig import ModelConfig
from .repository import ModelIndex
from .shared_memory import RegionStatus
from .statistics import Duration, VersionStatistics
from .tensors import WireTensor, output_bytes

HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_TYPE, BINARY_TYPE = "application/json", "application/octet-stream"


@dataclass(frozen=True)
class RestInfer:
    request: InferRequest
    binary: frozenset[str]  # outputs to answer as binary data
    binary_default: bool  # for outputs not named in the request


def infer_request(model: str, version: str, body: bytes, header_length: str | None) -> RestInfer:
    if header_length is None:
        header, binary = body, memoryview(b"")
    else:
        try:
            length = int(header_length)
        except ValueError:
            length = -1
        if not 0 <= length <= len(body):
            raise InvalidArgument(f"{HEADER_LENGTH} {header_length!r} is not a length within the body's {len(body)} bytes")
        header, binary = body[:length], memoryview(body)[length:]
    document = _document(header)
    parameters = _object(document.get("parameters", {}), "parameters")
    inputs, offset = [], 0
    for index, tensor in enumerate(_list(document.get("inputs"), "inputs")):
        tensor = _object(tensor, f"inputs[{index}]")
        name = _string(tensor.get("name"), f"inputs[{index}].name")
        datatype = _string(tensor.get("datatype"), f"input {name!r}: datatype")
        shape = tensor.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise InvalidArgument(f"input {name!r}: shape must be a list of integers")
        tensor_parameters = _object(tensor.get("parameters", {}), f"input {name!r}: parameters")
        size = tensor_parameters.get("binary_data_size")
        region = shared_memory.reference(tensor_parameters, f"input {name!r}")
        if region is not None:
            inputs.append(WireTensor(name, datatype, shape, region=region))
        elif size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
                raise InvalidArgument(f"input {name!r}: binary_data_size {size!r} exceeds the {len(binary) - offset} binary bytes left")
            inputs.append(WireTensor(name, datatype, shape, raw=binary[offset : offset + size]))
            offset += size
        elif "data" in tensor:
            inputs.append(WireTensor(name, datatype, shape, values=_flat(_list(tensor["data"], f"input {name!r}: data"))))
        else:
            raise InvalidArgument(f"input {name!r}: neither data nor a binary_data_size parameter")
    if offset != len(binary):
        raise InvalidArgument(f"the body holds {len(binary)} bytes of binary data, the inputs' binary_data_size {offset}")
    binary_default = parameters.get("binary_data_output") is True
    names, wanted, regions = [], set(), {}
    for index, output in enumerate(_list(document.get("outputs", []), "outputs")):
        output = _object(output, f"outputs[{index}]")
        name = _string(output.get("name"), f"outputs[{index}].name")
        names.append(name)
        output_parameters = _object(output.get("parameters", {}), f"output {name!r}: parameters")
        if (region := shared_memory.reference(output_parameters, f"output {name!r}")) is not None:
            regions[name] = region
        elif output_parameters.get("binary_data", binary_default) is True:
            wanted.add(name)
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidArgument("id must be a string")
    # HTTP has no deadline: Triton's timeout parameter, if any, is the request's (router/schedule.py).
    request = InferRequest(model, version, request_id, parameters, inputs, names, None, regions)
    return RestInfer(request, frozenset(wanted), binary_default and not names)


def infer_response(answer: InferAnswer, infer: RestInfer) -> tuple[bytes, dict[str, str]]:
    """The body and its headers: JSON alone, or JSON then the binary outputs' bytes."""
    outputs, chunks = [], []
    for name, array in answer.outputs:
        datatype, data = output_bytes(array)
        output = {"name": name, "datatype": datatype.value, "shape": list(array.shape)}
        if name in infer.binary or infer.binary_default:
            output["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        elif name not in answer.in_regions:
            output["data"] = array.ravel().tolist()
        # else neither data nor parameters, as Triton answers (its C++ client takes any parameters for binary data's)
        outputs.append(output)
    document = {"model_name": answer.model, "model_version": answer.version, "outputs": outputs, "parameters": answer.parameters}
    if answer.id:
        document["id"] = answer.id
    header = json.dumps(document, separators=(",", ":")).encode()
    if not chunks:
        return header, {"Content-Type": JSON_TYPE}
    return header + b"".join(chunks), {"Content-Type": BINARY_TYPE, HEADER_LENGTH: str(len(header))}


def server_metadata(metadata: ServerMetadata) -> dict:
    return {"name": metadata.name, "version": metadata.version, "extensions": list(metadata.extensions)}


def model_metadata(metadata: ModelMetadata) -> dict:
    return {
        "name": metadata.name,
        "versions": metadata.versions,
        "platform": metadata.platform,
        "inputs": [_tensor(spec) for spec in metadata.inputs],
        "outputs": [_tensor(spec) for spec in metadata.outputs],
    }


def model_config(config: ModelConfig) -> dict:
    document = {
        "name": config.name,
        "platform": config.platform,
        "backend": config.backend,
        "max_batch_size": config.max_batch_size,
        "input": [{"name": t.name, "data_type": t.data_type, "dims": list(t.dims)} for t in config.inputs],
        "output": [{"name": t.name, "data_type": t.data_type, "dims": list(t.dims)} for t in config.outputs],
        "instance_group": [{"name": g.name, "kind": g.kind, "count": g.count} for g in config.instance_groups],
    }
    if config.dynamic_batching is not None:
        document["dynamic_batching"] = {"max_queue_delay_microseconds": config.dynamic_batching.max_queue_delay_us}
    return document


def model_statistics(versions: list[VersionStatistics]) -> dict:
    return {"model_stats": [_version(stats) for stats in versions]}


def repository_index(models: list[ModelIndex]) -> list[dict]:
    return [{"name": m.name, "version": m.version, "state": m.state, "reason": m.reason} for m in models]


def index_ready_only(body: bytes) -> bool:
    """Whether an index request (its body optional) asks for ready versions only."""
    return body.strip() != b"" and _document(body).get("ready") is True


def load_parameters(body: bytes) -> dict:
    """A load's (or unload's) parameters; its body is optional."""
    return _object(_document(body).get("parameters", {}), "parameters") if body.strip() else {}


def region_status(regions: list[RegionStatus]) -> list[dict]:
    return [{"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size} for r in regions]


def region_registration(body: bytes) -> tuple[str, int, int]:
    """A register request's key, offset and byte size."""
    document = _document(body)
    key = _string(document.get("key"), "key")
    offset, byte_size = document.get("offset", 0), document.get("byte_size")
    for name, value in (("offset", offset), ("byte_size", byte_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidArgument(f"{name} must be a number of bytes (an integer ≥ 0), got {value!r}")
    return key, offset, byte_size


def _version(stats: VersionStatistics) -> dict:
    return {
        "name": stats.name,
        "version": stats.version,
        "last_inference": stats.last_inference_ms,
        "inference_count": stats.inference_count,
        "execution_count": stats.execution_count,
        "inference_stats": {
            "success": _duration(stats.success),
            "fail": _duration(stats.fail),
            "queue": _duration(stats.queue),
            "compute_input": _duration(stats.compute_input),
            "compute_infer": _duration(stats.compute_infer),
            "compute_output": _duration(stats.compute_output),
        },
        "batch_stats": [],
    }


def _duration(duration: Duration) -> dict:
    return {"count": duration.count, "ns": duration.ns}


def _tensor(spec: TensorSpec) -> dict:
    return {"name": spec.name, "datatype": spec.datatype.value, "shape": list(spec.shape)}


def _flat(values: list) -> Sequence[object]:
    """Row-major values of a flat or nested list (the protocol allows both)."""
    if not any(isinstance(value, list) for value in values):
        return values
    flat: list[object] = []
    for value in values:
        flat.extend(_flat(value) if isinstance(value, list) else (value,))
    return flat


def _document(body: bytes) -> dict:
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidArgument(f"the request is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidArgument("the request must be a JSON object")
    return document


def _object(value: object, where: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where} must be a JSON object")
    return value


def _list(value: object, where: str) -> list:
    if not isinstance(value, list):
        raise InvalidArgument(f"{where} must be a JSON list")
    return value


def _string(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{where} must be a string")
    return value
