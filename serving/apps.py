"""Serve applications by name and as declarative config: one application per (model, version, variant).

`quiver serve` deploys them from Python; the operator deploys the same applications through the
Ray dashboard's Serve REST API (`PUT /api/serve/applications/`), describing each one as a
`VariantApp`: the arguments of the application builder in serving/deployment.py. This module
imports neither Ray nor ONNX Runtime, so the operator can use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from .manifest import Name, Placement, Variant
from .store import ModelVersion

BUILDER = "quiver.serving.deployment:build_variant_app"


def app_name(version: ModelVersion, variant: Variant) -> str:
    """The Serve application of a variant."""
    return f"{app_prefix(version.manifest.name, version.manifest.version)}{variant.name}"


def app_prefix(model: str, version: str) -> str:
    """What the names of a model version's applications start with."""
    return f"{model}.{version}."


@dataclass(frozen=True)
class AppState:
    """A Serve application as Serve reports it: its status, and how many of its replicas run."""

    status: str  # RUNNING, DEPLOYING, UNHEALTHY, DEPLOY_FAILED, DELETING, ...
    # An application can answer while it is not RUNNING: while it scales or updates (DEPLOYING),
    # or after one of its replicas died (UNHEALTHY until Serve has replaced it).
    running: int

    @property
    def answers(self) -> bool:
        return self.running > 0


class VariantApp(BaseModel):
    """One variant's Serve application, as the builder's arguments: the store holds the rest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    store: Path
    model: Name
    version: Name
    variant: Name
    placement: Placement = Placement()
    key_file: Path | None = None  # on the replicas' nodes; decrypts a variant encrypted at rest
    verify_keys: list[Path] = []  # on the replicas' nodes; when given, the version's signature is checked first

    @property
    def name(self) -> str:
        return f"{app_prefix(self.model, self.version)}{self.variant}"

    def config(self) -> dict[str, Any]:
        """This application as an entry of Serve's declarative config (ServeDeploySchema.applications)."""
        return {
            "name": self.name,
            "import_path": BUILDER,
            "route_prefix": None,  # the router is the only ingress
            "args": self.model_dump(mode="json", exclude_defaults=True),
        }
