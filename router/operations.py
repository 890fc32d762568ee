"""The protocol's operations both doors call: one method each, on typed values.

The gRPC servicer (router/servicer.py) and the REST handlers (router/rest.py) only decode their
wire form, hand over the caller's headers, and encode what comes back. Who may call what, the
model lookup, routing hints, dispatch and the count of refused requests are decided here, once,
so both protocols answer a request alike: KServe's `DataPlane` under its REST and gRPC
transports (a name Quiver already gives the replicas' direct path, router/endpoints.py).

Errors are the router's (router/errors.py); each transport maps them to its status in one table.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

import numpy as np

from quiver import __version__
from quiver.serving import TensorSpec

from . import health, modelconfig, schedule, shared_memory, tensors
from .auth import Authenticator
from .dispatch import Dispatcher
from .errors import DeadlineExceeded, InvalidArgument, NotFound, RouterError, Unavailable, Unimplemented
from .hints import RoutingHints
from .logcontext import begin_request
from .metrics import PROTOCOL, RouterMetrics
from .readiness import Readiness
from .repository import ModelIndex, Repository
from .routes import RouteTable
from .shared_memory import RegionStatus, SharedMemory
from .statistics import VersionStatistics
from .tensors import RegionRef, WireTensor
from .traffic import Traffic

Parameter = str | int | bool
# The caller's metadata (gRPC) or headers (REST), lower-case names: where its token travels.
Caller = Iterable[tuple[str, str | bytes]]

# Triton's names of the protocol extensions served (and only those that work), for ServerMetadata.
EXTENSIONS = ("model_configuration", "statistics", "system_shared_memory", "schedule_policy", "binary_tensor_data")


@dataclass(frozen=True)
class InferRequest:
    model: str
    version: str  # "": the traffic weights pick one
    id: str
    parameters: Mapping[str, object]  # quiver.* routing hints among them
    inputs: Sequence[WireTensor]
    outputs: Sequence[str]  # the outputs asked for, in order; empty: every output
    time_remaining_s: float | None = None  # until the caller's deadline; None: no deadline
    output_regions: Mapping[str, RegionRef] = field(default_factory=dict)  # outputs to write into shared memory


@dataclass(frozen=True)
class InferAnswer:
    model: str
    version: str
    id: str
    outputs: list[tuple[str, np.ndarray]]  # in the order asked for
    parameters: dict[str, Parameter]  # quiver.variant, .version, .pool, .reason, .batch_*
    in_regions: Mapping[str, RegionRef] = field(default_factory=dict)  # outputs written to shared memory: what was written


@dataclass(frozen=True)
class ServerMetadata:
    name: str
    version: str
    extensions: tuple[str, ...]


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


class Operations:
    def __init__(
        self,
        routes: RouteTable,
        auth: Authenticator,
        traffic: Traffic,
        readiness: Readiness,
        dispatcher: Dispatcher,
        metrics: RouterMetrics,
        max_request_bytes: int,
        shared: SharedMemory | None = None,
        repository: Repository | None = None,
    ) -> None:
        self._routes = routes
        self._auth = auth
        self._traffic = traffic
        self._readiness = readiness
        self._dispatcher = dispatcher
        self._metrics = metrics
        self._max_request_bytes = max_request_bytes
        self._shared = shared or SharedMemory()
        self._repository = repository or Repository(routes, readiness, "this router serves a fixed set of models")

    # Probes are open: no token needed.
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        """Ready when every model version has a variant that can answer."""
        versions = [self._routes.lookup(model, v) for model, vs in self._routes.models().items() for v in vs]
        return bool(versions) and all(map(self._readiness.version_ready, versions))

    def model_ready(self, caller: Caller, name: str, version: str) -> bool:
        self._auth.check(caller, name)
        # An unknown model is simply not ready (as Triton answers), so probes need no special case;
        # nor is a version in its Shadow step, which answers no client.
        try:
            routes = self._routes.lookup(name, version)
        except NotFound:
            return False
        return not self._traffic.split.in_shadow(name, routes.manifest.version) and self._readiness.version_ready(routes)

    def server_metadata(self, caller: Caller) -> ServerMetadata:
        self._auth.check(caller, None)  # any valid token
        return ServerMetadata("quiver", __version__, EXTENSIONS + (("model_repository",) if self._repository.loads else ()))

    def model_metadata(self, caller: Caller, name: str, version: str) -> ModelMetadata:
        self._auth.check(caller, name)
        manifest = self._routes.lookup(name, version).manifest
        return ModelMetadata(
            manifest.name, list(self._routes.models()[manifest.name]), manifest.platform, list(manifest.inputs), list(manifest.outputs)
        )

    def model_config(self, caller: Caller, name: str, version: str) -> modelconfig.ModelConfig:
        self._auth.check(caller, name)
        return modelconfig.describe(self._routes.lookup(name, version).manifest)

    def statistics(self, caller: Caller, name: str, version: str) -> list[VersionStatistics]:
        """Empty name: every model (a token scoped to some models may not ask for that); empty version: every version."""
        self._auth.check(caller, name)
        if name:
            self._routes.lookup(name, version)  # NotFound for a model or version not served
        return self._metrics.statistics.served(self._routes.models(), name, version)

    async def infer(
        self, caller: Caller, model: str, read: Callable[[], Awaitable[InferRequest]], protocol: str
    ) -> InferAnswer:
        """Serve one request for `model`; `read` reads and decodes its body, once the caller may use the model."""
        self._auth.check(caller, model)
        PROTOCOL.set(protocol)
        try:
            request = await read()
            begin_request(request.id)
            chosen = request.version or self._traffic.pick(model)
            if self._traffic.split.in_shadow(model, chosen):
                raise NotFound(f"model {model!r} version {chosen!r} is in its rollout's Shadow step: it answers no requests yet")
            version = self._routes.lookup(model, chosen)
            remaining_s = schedule.time_remaining_s(request.parameters, request.time_remaining_s)
            if remaining_s is not None and remaining_s <= 0:
                raise DeadlineExceeded("the deadline passed before the request was read")
            hints = RoutingHints.from_parameters(request.parameters, None if remaining_s is None else 1000 * remaining_s)
            inputs = tensors.decode_inputs(self._shared.read(request.inputs), version.manifest, self._max_request_bytes)
            names = tensors.requested_outputs(request.outputs, version.manifest)
            windows = {name: self._shared.window(ref, f"output {name!r}") for name, ref in request.output_regions.items()}
        except RouterError as exc:
            self._metrics.refused(model, exc.code.name).inc()
            raise
        try:
            served = await self._dispatcher.infer(version, hints, inputs, remaining_s)
        except Unavailable as exc:  # say why: a pool without nodes, replicas that stopped answering
            raise health.explained(exc, self._readiness, version) from exc
        outputs = served.result.outputs
        in_regions = {
            name: shared_memory.write(window, tensors.output_bytes(outputs[name])[1], f"output {name!r}", request.output_regions[name])
            for name, window in windows.items()
        }
        return InferAnswer(
            model=version.manifest.name,
            version=version.manifest.version,
            id=request.id,
            outputs=[(name, outputs[name]) for name in names],
            parameters={
                "quiver.variant": served.route.variant.name,
                "quiver.version": version.manifest.version,
                "quiver.pool": served.route.variant.pool,
                "quiver.reason": served.reason,
                "quiver.batch_requests": served.result.batch_requests,
                "quiver.batch_rows": served.result.batch_rows,
            },
            in_regions=in_regions,
        )

    # The model repository (router/repository.py): loading and unloading a model take a token that may use it.
    async def repository_index(self, caller: Caller, ready_only: bool) -> list[ModelIndex]:
        self._auth.check(caller, None)
        return await self._repository.index(ready_only)

    async def load_model(self, caller: Caller, model: str, read: Callable[[], Mapping[str, object]]) -> None:
        """Load `model`'s versions; `read` decodes the load's parameters, once the caller may use the model."""
        self._auth.check(caller, model)
        parameters = read()
        if files := [key for key in parameters if key.startswith("file:")]:
            raise InvalidArgument(f"versions load from the store; files cannot be sent with a load ({files})")
        config = parameters.get("config")
        if config is not None and not isinstance(config, str):
            raise InvalidArgument("parameter config must be a JSON string")
        await self._repository.load(model, config)

    async def unload_model(self, caller: Caller, model: str) -> None:
        self._auth.check(caller, model)
        await self._repository.unload(model)

    # System shared memory: regions are the server's, not a caller's (as in Triton), so any valid token may use them.
    def register_region(self, caller: Caller, name: str, read: Callable[[], tuple[str, int, int]]) -> None:
        """Register region `name`; `read` decodes its key, offset and byte size, once the caller has a valid token."""
        self._auth.check(caller, None)
        self._shared.register(name, *read())

    def unregister_region(self, caller: Caller, name: str) -> None:
        self._auth.check(caller, None)
        self._shared.unregister(name)

    def region_status(self, caller: Caller, name: str) -> list[RegionStatus]:
        self._auth.check(caller, None)
        return self._shared.status(name)

    # CUDA shared memory: none can be registered, so there is never a region to report or forget. Status and
    # unregister answer that truthfully (perf_analyzer unregisters CUDA regions too, on every run).
    def register_cuda_region(self, caller: Caller) -> NoReturn:
        self._auth.check(caller, None)
        raise Unimplemented(
            "CUDA shared memory is not supported: the replicas run in their own processes, on other nodes, and no GPU "
            "pool can read a client's CUDA memory yet; use system shared memory"
        )

    def cuda_region_status(self, caller: Caller, name: str) -> list[RegionStatus]:
        self._auth.check(caller, None)
        if name:
            raise NotFound(f"unable to find cuda shared memory region: {name!r} (none can be registered)")
        return []

    def unregister_cuda_region(self, caller: Caller, name: str) -> None:
        self._auth.check(caller, None)
