"""quiver.serving: model store and manifest, the ONNX Runtime runtime, the Ray Serve deployments.

The public face other packages use; `serving` never imports `router`. Names load on first use,
so a process that only reads manifests (the operator) never loads ONNX Runtime or Ray.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "Datatype": "datatypes",
    "DeadlinePassed": "requests",
    "InferenceRequest": "requests",
    "InferenceResult": "requests",
    "VariantReplica": "deployment",
    "application_states": "deployment",
    "deploy": "deployment",
    "deploy_all": "deployment",
    "app_name": "apps",
    "AppState": "apps",
    "VariantApp": "apps",
    "build_example": "example",
    "example_version": "example",
    "Autoscaling": "manifest",
    "Batching": "manifest",
    "Device": "manifest",
    "Manifest": "manifest",
    "Metrics": "manifest",
    "Placement": "manifest",
    "Precision": "manifest",
    "Replicas": "manifest",
    "TensorSpec": "manifest",
    "Variant": "manifest",
    "Threads": "manifest",
    "ServingSettings": "manifest",
    "BatchLatency": "manifest",
    "Profile": "manifest",
    "DataPlaneClient": "dataplane",
    "ReplicaUnreachable": "dataplane",
    "in_daemon_thread": "blocking",
    "DirectoryUnavailable": "directory",
    "Endpoint": "directory",
    "listen_directory": "directory",
    "node_resources": "pools",
    "pool_resource": "pools",
    "pools_with_nodes": "pools",
    "IntegrityError": "integrity",
    "variant_bytes": "integrity",
    "InferenceError": "requests",
    "ModelRuntime": "runtime",
    "ModelVersion": "store",
    "StoreError": "store",
    "from_onnx_file": "store",
    "load_store": "store",
    "read_version": "store",
    "write_version": "store",
}

_MODULES = ("signing", "segments")

__all__ = sorted([*_PUBLIC, *_MODULES])


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
