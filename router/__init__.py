"""quiver.router: the Open Inference Protocol gRPC router in front of the Serve replicas.

Public face: `Router` and `RouterSettings`, and the route table it serves from. They load on
first use: the router's generated protobuf module must stay out of processes that only use
the policy or the route table (a client process holding tritonclient's copy of the protocol).
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "RouteTable": "routes",
    "VariantRoute": "routes",
    "VersionRoutes": "routes",
    "Router": "server",
    "RouterSettings": "server",
    "TlsSettings": "server",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
