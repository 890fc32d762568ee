"""quiver.serving: model store and manifest, the ONNX Runtime runtime, the Ray Serve deployments.

The public face other packages use; `serving` never imports `router`.
"""

from . import signing
from .datatypes import Datatype
from .deployment import DeadlinePassed, InferenceResult, VariantReplica, app_name, application_states, deploy, deploy_all
from .example import build_example, example_version
from .manifest import Autoscaling, Batching, Device, Manifest, Metrics, Precision, Replicas, TensorSpec, Variant
from .pools import node_resources, pool_resource, pools_with_nodes
from .integrity import IntegrityError, variant_bytes
from .runtime import InferenceError, ModelRuntime
from .store import ModelVersion, StoreError, from_onnx_file, load_store, read_version, write_version

__all__ = [
    "Autoscaling",
    "Batching",
    "Datatype",
    "DeadlinePassed",
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
    "application_states",
    "build_example",
    "deploy",
    "deploy_all",
    "example_version",
    "from_onnx_file",
    "load_store",
    "node_resources",
    "pool_resource",
    "pools_with_nodes",
    "read_version",
    "signing",
    "variant_bytes",
    "write_version",
]
