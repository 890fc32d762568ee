"""quiver.serving: model store and manifest, the ONNX Runtime runtime, the Ray Serve deployments.

The public face other packages use; `serving` never imports `router`.
"""

from .datatypes import Datatype
from .deployment import InferenceResult, VariantReplica, app_name, deploy
from .example import build_example, example_version
from .manifest import Batching, Device, Manifest, Metrics, Precision, Replicas, TensorSpec, Variant
from .runtime import InferenceError, IntegrityError, ModelRuntime
from .store import ModelVersion, StoreError, from_onnx_file, load_store, read_version, write_version

__all__ = [
    "Batching",
    "Datatype",
    "Device",
    "InferenceError",
    "InferenceResult",
    "IntegrityError",
    "Manifest",
    "Metrics",
    "ModelRuntime",
    "ModelVersion",
    "Precision",
    "Replicas",
    "StoreError",
    "TensorSpec",
    "Variant",
    "VariantReplica",
    "app_name",
    "build_example",
    "deploy",
    "example_version",
    "from_onnx_file",
    "load_store",
    "read_version",
    "write_version",
]
