"""The route table: the deployed variants of every model version, and how to reach them.

Built from model manifests and the DeploymentHandles of their variants. A request names a
model and optionally a version (the newest when empty); the policy then picks the variant.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property

from ray.serve.handle import DeploymentHandle

from quiver.serving import Manifest, ModelVersion, Variant, app_name

from .errors import NotFound


@dataclass(frozen=True)
class VariantRoute:
    """One deployed variant and the handle that reaches its replicas."""

    version: ModelVersion
    variant: Variant
    handle: DeploymentHandle

    @property
    def manifest(self) -> Manifest:
        return self.version.manifest

    @cached_property
    def app(self) -> str:
        """Its Serve application's name (made once: every request asks for it)."""
        return app_name(self.version, self.variant)

    @cached_property
    def key(self) -> tuple[str, str, str]:
        """(model, version, variant): what stays the same when the route table is replaced."""
        return self.manifest.name, self.manifest.version, self.variant.name


@dataclass(frozen=True)
class VersionRoutes:
    """The deployed variants of one model version, by name."""

    version: ModelVersion
    variants: dict[str, VariantRoute] = field(default_factory=dict)

    @property
    def manifest(self) -> Manifest:
        return self.version.manifest


class RouteTable:
    def __init__(self, routes: Iterable[VariantRoute] = ()) -> None:
        self.replace(routes)

    def replace(self, routes: Iterable[VariantRoute]) -> None:
        """Serve these routes from now on; swapped in one assignment, requests in flight keep theirs."""
        models: dict[str, dict[str, VersionRoutes]] = {}
        for route in routes:
            versions = models.setdefault(route.manifest.name, {})
            versions.setdefault(route.manifest.version, VersionRoutes(route.version)).variants[route.variant.name] = route
        # Swapped together: a request without a version gets the newest, found here once, not per request.
        self._models, self._newest = models, {name: max(versions, key=version_order) for name, versions in models.items()}

    def models(self) -> dict[str, list[str]]:
        """Every model name and its versions, oldest first."""
        return {name: sorted(versions, key=version_order) for name, versions in self._models.items()}

    def routes(self) -> list[VariantRoute]:
        return [route for versions in self._models.values() for v in versions.values() for route in v.variants.values()]

    def lookup(self, model: str, version: str = "") -> VersionRoutes:
        versions = self._models.get(model)
        if versions is None:
            raise NotFound(f"unknown model {model!r}; serving {sorted(self._models)}")
        if not version:
            version = self._newest[model]
        found = versions.get(version)
        if found is None:
            raise NotFound(f"model {model!r} has no version {version!r}; it has {sorted(versions, key=version_order)}")
        return found


def version_order(version: str) -> tuple[int, int, str]:
    # Numeric versions compare as numbers ("10" after "9") and after any non-numeric ones.
    return (1, int(version), "") if version.isdigit() else (0, 0, version)
