"""Quiver: optimized ONNX model variants on Ray Serve, behind one Open Inference Protocol endpoint.

Packages: `quiver.serving` (store, runtime, Serve deployments), `quiver.router` (the gRPC
router), `quiver.cli` (the `quiver` command).
"""

__version__ = "0.1.0"
