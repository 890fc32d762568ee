"""The route table: which Serve deployment answers for a model, a version and a variant.

Built from model manifests and the DeploymentHandles of their variants. A request names a
model and optionally a version (the newest when empty) and a variant (the manifest's default
when absent).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ray.serve.handle import DeploymentHandle

from quiver.serving import Manifest, ModelVersion, Variant

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


class RouteTable:
    def __init__(self, routes: Iterable[VariantRoute]) -> None:
        # model → version → variant → route
        self._models: dict[str, dict[str, dict[str, VariantRoute]]] = {}
        for route in routes:
            versions = self._models.setdefault(route.manifest.name, {})
            versions.setdefault(route.manifest.version, {})[route.variant.name] = route

    def models(self) -> dict[str, list[str]]:
        """Every model name and its versions, oldest first."""
        return {name: sorted(versions, key=_version_order) for name, versions in self._models.items()}

    def manifest(self, model: str, version: str = "") -> Manifest:
        return next(iter(self._variants(model, version).values())).manifest

    def resolve(self, model: str, version: str = "", variant: str | None = None) -> VariantRoute:
        variants = self._variants(model, version)
        name = variant or next(iter(variants.values())).manifest.default.name
        try:
            return variants[name]
        except KeyError:
            raise NotFound(f"model {model!r} has no variant {name!r}; it has {sorted(variants)}") from None

    def _variants(self, model: str, version: str) -> dict[str, VariantRoute]:
        versions = self._models.get(model)
        if versions is None:
            raise NotFound(f"unknown model {model!r}; serving {sorted(self._models)}")
        if not version:
            version = max(versions, key=_version_order)
        variants = versions.get(version)
        if variants is None:
            raise NotFound(f"model {model!r} has no version {version!r}; it has {sorted(versions, key=_version_order)}")
        return variants


def _version_order(version: str) -> tuple[int, int, str]:
    # Numeric versions compare as numbers ("10" after "9") and after any non-numeric ones.
    return (1, int(version), "") if version.isdigit() else (0, 0, version)
