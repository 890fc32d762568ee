"""quiver.operator: the ModelDeployment CRD's controller (kopf).

Public face: `run` with `OperatorSettings`, and the typed spec. Layers, top to bottom:
main (flags) → handlers (kopf) → rollout (one look: spec vs status → next step) → the wrappers
of the outside world: kube (Kubernetes API), serve_api (Ray's Serve REST API), gates (router
metrics). It reads manifests through quiver.serving's store, never ONNX Runtime or Ray.
"""

from .settings import OperatorSettings
from .spec import ModelDeploymentSpec, SpecError, parse_spec

__all__ = ["ModelDeploymentSpec", "OperatorSettings", "SpecError", "parse_spec"]
