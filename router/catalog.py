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
from quiver.serving.manifest import Placement, shadow_metric

from .readiness import Readiness
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
        readiness: Readiness,
        on_change: Callable[[dict[str, dict[str, int]]], None] = lambda weights: None,
        connect: Callable[[str], DeploymentHandle] = serve.get_app_handle,
    ) -> None:
        self._on_change = on_change
        self._readiness = readiness
        self._table = table
        self._traffic = traffic
        self._store = store
        self._connect = connect
        self._handles: dict[str, DeploymentHandle] = {}
        self._warm: set[DeploymentHandle] = set()
        self.file: WatchedFile[tuple[list[VariantRoute], TrafficSplit] | None] = WatchedFile(
            path, self._parse, None, "route table", retry=True
        )

    async def refresh(self) -> bool:
        """Take the file's new content, if any; reads and lookups block, so they run off the loop.

        New variants get one round trip before they join the table: it sets up the handle and
        learns the replicas, so no request pays for that (a canary step's first requests would).
        """
        if not await asyncio.to_thread(self.file.reload) or self.file.value is None:
            return False
        routes, split = self.file.value
        fresh = [route for route in routes if route.handle not in self._warm]
        results = await asyncio.gather(*(self._warm_up(route) for route in fresh), return_exceptions=True)
        for route, result in zip(fresh, results):
            if isinstance(result, BaseException):
                logger.warning("%s variant %s did not answer its first call: %s", route.version.key, route.variant.name, result)
        self._warm = {route.handle for route in routes}
        try:  # so that the new variants count as ready the moment they arrive
            await self._readiness.refresh()
        except Exception as exc:  # noqa: BLE001 - its own watch catches up within a second
            logger.warning("could not read Serve's application status: %s", exc)
        self._table.replace(routes)
        self._traffic.use(split)
        self._on_change(split.models)
        return True

    async def watch(self, interval_s: float = 0.25) -> None:
        """Follow the file (a named task the router cancels on stop)."""
        while True:
            await asyncio.sleep(interval_s)
            await self.refresh()

    async def _warm_up(self, route: VariantRoute, timeout_s: float = 10.0) -> None:
        await asyncio.wait_for(route.handle.ready.remote(), timeout_s)

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
                    if placed.shadow is not None:  # one the outputs cannot support is refused with the table
                        shadow_metric(version.manifest, placed, f"placement.{model}.{version_name}.{variant.name}.shadow")
                    routes.append(VariantRoute(version, placed, self._handle(app_name(version, variant))))
        self._handles = {app_name(route.version, route.variant): route.handle for route in routes}
        return routes, split

    def _handle(self, name: str) -> DeploymentHandle:
        if name not in self._handles:
            self._handles[name] = self._connect(name)
        return self._handles[name]
