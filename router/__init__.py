"""quiver.router: the Open Inference Protocol gRPC router in front of the Serve replicas.

Public face: `Router` and its settings, and the route table it serves from.
"""

from .routes import RouteTable, VariantRoute
from .server import Router, RouterSettings

__all__ = ["RouteTable", "Router", "RouterSettings", "VariantRoute"]
