"""Triton's model repository extension: what the store holds (RepositoryIndex), and loading or
unloading its versions without a restart (RepositoryModelLoad/Unload).

Only `quiver serve STORE` owns its deployments, so only there do load and unload act
(`StoreRepository`): a load deploys the versions asked for as Serve applications, waits until
each has a variant that answers, and only then adds them to the route table; versions the load
no longer asks for, and every version of an unloaded model, leave the table first and are deleted
after. The table is swapped in one assignment (router/routes.py), so requests to the other
versions are never touched. A version the traffic file gives weight to is not unloaded.

Triton's unit is the model. Which versions a load serves is what Triton's `version_policy` says,
in the load's `config` parameter (the only field of it Quiver takes: the rest comes from the
manifest): `{"version_policy": {"specific": {"versions": [2]}}}`, `{"latest": {"num_versions": 1}}`
or `{"all": {}}`; without one, every version in the store, as `quiver serve STORE` starts.

Elsewhere (`Repository`) the index lists what is served and load and unload are refused with
FAILED_PRECONDITION, saying who owns deployments: the operator on a cluster, the command line
without a store.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ray.serve.handle import DeploymentHandle

from quiver.serving import ModelVersion, StoreError, app_name, load_store

from .errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from .readiness import Readiness
from .routes import RouteTable, VariantRoute, version_order
from .traffic import Traffic

logger = logging.getLogger(__name__)

ON_CLUSTER = (
    "on a cluster the operator owns deployments: change the ModelDeployment (kubectl apply) to load or unload a version"
)
NO_STORE = (
    "quiver serve was started without a store (one model file, or the example): restart it with a store to load or "
    "unload versions"
)


@dataclass(frozen=True)
class ModelIndex:
    name: str
    version: str
    state: str  # Triton's: READY, UNAVAILABLE, LOADING, UNLOADING
    reason: str = ""


class Deployer(Protocol):
    """How `quiver serve STORE` deploys (quiver/embedded.py). Blocking calls: run off the event loop."""

    store: Path

    def deploy(self, versions: list[ModelVersion]) -> dict[str, DeploymentHandle]:
        """Check and deploy the versions' variants; their handles by application name."""
        ...

    def delete(self, apps: list[str]) -> None:
        """Delete these Serve applications (their replicas finish what they hold first)."""
        ...


class Repository:
    """What is served, and no loading: the deployments are someone else's (`why`)."""

    loads = False  # whether load and unload act (ServerMetadata lists the extension only then)

    def __init__(self, routes: RouteTable, readiness: Readiness, why: str) -> None:
        self._routes = routes
        self._readiness = readiness
        self._why = why

    async def index(self, ready_only: bool) -> list[ModelIndex]:
        entries = [self._served(model, version) for model, versions in self._routes.models().items() for version in versions]
        return [entry for entry in entries if entry.state == "READY" or not ready_only]

    async def load(self, model: str, config: str | None) -> None:
        raise FailedPrecondition(self._why)

    async def unload(self, model: str) -> None:
        raise FailedPrecondition(self._why)

    def _served(self, model: str, version: str) -> ModelIndex:
        if self._readiness.version_ready(self._routes.lookup(model, version)):
            return ModelIndex(model, version, "READY")
        return ModelIndex(model, version, "UNAVAILABLE", "no variant can answer yet")


class StoreRepository(Repository):
    loads = True

    def __init__(
        self, routes: RouteTable, readiness: Readiness, traffic: Traffic, deployer: Deployer, ready_timeout_s: float = 300.0
    ) -> None:
        super().__init__(routes, readiness, "")
        self._traffic = traffic
        self._deployer = deployer
        self._ready_timeout_s = ready_timeout_s
        self._lock = asyncio.Lock()  # one load or unload at a time
        self._changing: dict[tuple[str, str], str] = {}  # (model, version) → LOADING or UNLOADING

    async def index(self, ready_only: bool) -> list[ModelIndex]:
        stored = await self._stored()
        served = self._routes.models()
        entries = []
        for version in stored:
            key = (version.manifest.name, version.manifest.version)
            if key in self._changing:
                entries.append(ModelIndex(*key, self._changing[key]))
            elif key[1] in served.get(key[0], ()):
                entries.append(self._served(*key))
            else:
                entries.append(ModelIndex(*key, "UNAVAILABLE", "unloaded"))
        return [entry for entry in entries if entry.state == "READY" or not ready_only]

    async def load(self, model: str, config: str | None) -> None:
        async with self._lock:
            stored = {v.manifest.version: v for v in await self._stored() if v.manifest.name == model}
            if not stored:
                raise NotFound(f"the store {self._deployer.store} holds no model {model!r}")
            wanted = versions_wanted(config, sorted(stored, key=version_order))
            served = set(self._routes.models().get(model, ()))
            await self._add(model, [stored[v] for v in wanted if v not in served])
            await self._remove(model, sorted(served - set(wanted), key=version_order))

    async def unload(self, model: str) -> None:
        async with self._lock:
            served = self._routes.models().get(model)
            if served is None:
                raise NotFound(f"unknown model {model!r}; serving {sorted(self._routes.models())}")
            await self._remove(model, served)

    async def _stored(self) -> list[ModelVersion]:
        try:
            return await asyncio.to_thread(load_store, self._deployer.store)
        except StoreError as exc:
            raise FailedPrecondition(f"the store cannot be read: {exc}") from None

    async def _add(self, model: str, versions: list[ModelVersion]) -> None:
        if not versions:
            return
        for version in versions:
            self._changing[(model, version.manifest.version)] = "LOADING"
        try:
            try:
                handles = await asyncio.to_thread(self._deployer.deploy, versions)
            except StoreError as exc:
                raise FailedPrecondition(str(exc)) from None
            routes = [VariantRoute(v, variant, handles[app_name(v, variant)]) for v in versions for variant in v.manifest.variants]
            try:
                await self._until_ready(routes)
            except Unavailable:
                await asyncio.to_thread(self._deployer.delete, [route.app for route in routes])
                raise
            self._routes.replace([*self._routes.routes(), *routes])
            logger.warning("loaded %s", ", ".join(v.key for v in versions))
        finally:
            for version in versions:
                self._changing.pop((model, version.manifest.version), None)

    async def _until_ready(self, routes: list[VariantRoute]) -> None:
        """Until every version has a variant that answers (or the timeout: Unavailable)."""
        deadline = time.monotonic() + self._ready_timeout_s
        by_version: dict[str, list[VariantRoute]] = {}
        for route in routes:
            by_version.setdefault(route.version.key, []).append(route)
        while True:
            await self._readiness.refresh()
            waiting = [key for key, variants in by_version.items() if not any(map(self._readiness.ready, variants))]
            if not waiting:
                return
            if failed := [key for key in waiting if all(map(self._readiness.failed, by_version[key]))]:
                raise Unavailable(f"{failed} could not start (its replicas' log says why); not loaded")
            if time.monotonic() > deadline:
                raise Unavailable(f"{waiting} had no variant ready within {self._ready_timeout_s:g} s; not loaded")
            await asyncio.sleep(0.5)

    async def _remove(self, model: str, versions: list[str]) -> None:
        if not versions:
            return
        weighted = [v for v, weight in self._traffic.split.models.get(model, {}).items() if weight > 0 and v in versions]
        if weighted:
            raise FailedPrecondition(f"the traffic file sends model {model!r}'s requests to versions {weighted}: change it first")
        for version in versions:
            self._changing[(model, version)] = "UNLOADING"
        try:
            leaving = [r for r in self._routes.routes() if r.manifest.name == model and r.manifest.version in versions]
            self._routes.replace([r for r in self._routes.routes() if r.manifest.name != model or r.manifest.version not in versions])
            await asyncio.to_thread(self._deployer.delete, [route.app for route in leaving])
            logger.warning("unloaded %s", ", ".join(f"{model}:{v}" for v in versions))
        finally:
            for version in versions:
                self._changing.pop((model, version), None)


def versions_wanted(config: str | None, stored: list[str]) -> list[str]:
    """The versions Triton's version policy in a load's `config` asks for (`stored`: oldest first)."""
    if config is None:
        return stored
    try:
        document = json.loads(config)
    except ValueError as exc:
        raise InvalidArgument(f"parameter config is not valid JSON: {exc}") from None
    if not isinstance(document, dict) or set(document) - {"name", "version_policy"}:
        raise InvalidArgument(
            "a load's config may set only version_policy: the rest of the model's configuration is its manifest's"
        )
    policy = document.get("version_policy", {"all": {}})
    if not isinstance(policy, dict) or len(policy) != 1:
        raise InvalidArgument(f"version_policy must be one of latest, all or specific, got {policy!r}")
    [(kind, value)] = policy.items()
    value = value if isinstance(value, Mapping) else {}
    if kind == "all":
        return stored
    if kind == "latest":
        count = value.get("num_versions", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise InvalidArgument(f"version_policy.latest.num_versions must be a positive integer, got {count!r}")
        return stored[-count:]
    if kind == "specific":
        asked = value.get("versions")
        if not isinstance(asked, list) or not asked or not all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in asked):
            raise InvalidArgument(f"version_policy.specific.versions must be a list of versions, got {asked!r}")
        missing = sorted({str(v) for v in asked} - set(stored))
        if missing:
            raise NotFound(f"the store holds no versions {missing} of this model; it holds {stored}")
        return [v for v in stored if v in {str(a) for a in asked}]
    raise InvalidArgument(f"version_policy must be one of latest, all or specific, got {kind!r}")
