"""A cluster router's route table: the versions the operator's routes file names, read from the store.

`quiver router` serves what the operator decided, nothing else: the file (a ConfigMap the
router pods mount, in the traffic format of router/traffic.py) names each model's versions and
their weights, and where the operator placed each variant. On every change the manifests are
read from the shared store and the variants' Serve applications looked up; the new table and
weights are swapped in together. A file naming a version whose manifest or application is not
there yet is refused and retried, and the table in force stays.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from ray import serve
from ray.serve.handle import DeploymentHandle

from quiver.serving import app_name, read_version
from quiver.serving.manifest import Placement

from .routes import RouteTable, VariantRoute
from .traffic import Traffic, TrafficSplit
from .watched import WatchedFile

logger = logging.getLogger(__name__)


class Catalog:
    def __init__(
        self,
        table: RouteTable,
        traffic: Traffic,
        store: Path,
        path: Path,
        on_change: Callable[[dict[str, dict[str, int]]], None] = lambda weights: None,
        connect: Callable[[str], DeploymentHandle] = serve.get_app_handle,
    ) -> None:
        self._on_change = on_change
        self._table = table
        self._traffic = traffic
        self._store = store
        self._connect = connect
        self._handles: dict[str, DeploymentHandle] = {}
        self.file: WatchedFile[tuple[list[VariantRoute], TrafficSplit] | None] = WatchedFile(
            path, self._parse, None, "route table", retry=True
        )

    def reload(self) -> bool:
        if not self.file.reload() or self.file.value is None:
            return False
        routes, split = self.file.value
        self._table.replace(routes)
        self._traffic.use(split)
        self._on_change(split.models)
        return True

    async def watch(self, interval_s: float = 0.25) -> None:
        """Follow the file (a named task the router cancels on stop); reads and lookups block, so off the loop."""
        while True:
            await asyncio.sleep(interval_s)
            await asyncio.to_thread(self.reload)

    def _parse(self, content: bytes) -> tuple[list[VariantRoute], TrafficSplit]:
        split = TrafficSplit.model_validate_json(content)
        routes = []
        for model, weights in split.models.items():
            for version_name in weights:
                version = read_version(self._store / model / version_name)
                default = split.default_variant.get(model, {}).get(version_name)
                if default is not None:
                    version.manifest.variant(default)  # KeyError: not a variant of this version
                    version = replace(version, manifest=version.manifest.model_copy(update={"default_variant": default}))
                placement = split.placement.get(model, {}).get(version_name, {})
                for variant in version.manifest.variants:
                    placed = placement.get(variant.name, Placement()).apply(variant)
                    routes.append(VariantRoute(version, placed, self._handle(app_name(version, variant))))
        self._handles = {app_name(route.version, route.variant): route.handle for route in routes}
        return routes, split

    def _handle(self, name: str) -> DeploymentHandle:
        if name not in self._handles:
            self._handles[name] = self._connect(name)
        return self._handles[name]
