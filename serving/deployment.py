"""The Ray Serve deployment of one (model, version, variant), with dynamic batching.

One Serve application per variant, holding one deployment whose replicas each own a
`ModelRuntime`. Concurrent requests are joined along the batch axis (axis 0), run in one
ONNX Runtime call, and split back. The router calls `infer_many` through a DeploymentHandle
with the requests it coalesced (router/coalesce.py): they are already a batch, run as such;
`infer` takes one request and joins it with others through Serve's batching.

Each replica also opens a data plane (serving/dataplane.py): the same `infer_many`, called by
routers on their own connections without Serve's per-call path, while Serve keeps placing, replacing and
scaling the replicas. A replica counts the requests it holds, through either door, and reports
them to Serve's autoscaler (`record_autoscaling_stats`; policy in serving/autoscaling.py):
Serve's own count sees only calls through its handle, and one call carries many requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from itertools import accumulate, groupby
from pathlib import Path

import numpy as np
import ray
from ray import serve
from ray.serve import Application, RunTarget
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import ApplicationStatus, ReplicaState

from . import signing
from .apps import AppState, VariantApp, app_name
from .autoscaling import POLICY, REQUESTS_METRIC
from .crypto import read_key
from .dataplane import DataPlane
from .integrity import variant_bytes
from .manifest import Variant
from .pools import REPLICA_SHARE, pool_resource
from .requests import DeadlinePassed, InferenceError, InferenceRequest, InferenceResult, Tensors
from .runtime import ModelRuntime
from .store import ModelVersion, read_version

logger = logging.getLogger(__name__)


@serve.deployment
class VariantReplica:
    """A replica of one variant: verifies and loads the model, then serves `infer_many` calls
    through its Serve handle and its data plane."""

    async def __init__(self, version: ModelVersion, variant: Variant, key_file: Path | None = None) -> None:
        # `variant` as placed (pool, replicas, batching may differ from the manifest's).
        manifest = version.manifest
        # The key file, not the key, travels in the deployment's arguments: Ray keeps those.
        key = read_key(key_file) if key_file and variant.encryption else None
        self._runtime = ModelRuntime(
            variant_bytes(version, variant, key),
            f"{version.key}/{variant.name}",
            manifest.inputs,
            device=variant.device,
            cpus=variant.replicas.num_cpus,
            threads=variant.threads,
        )
        self._batchable = manifest.batchable
        self._max_rows = variant.batching.max_batch_size
        self._infer_batch.set_max_batch_size(self._max_rows)
        self._infer_batch.set_batch_wait_timeout_s(variant.batching.max_wait_ms / 1000)
        self._waits = variant.batching.max_wait_ms > 0
        # ONNX Runtime releases the GIL: running it off the event loop lets the next batch
        # gather while this one computes. One thread, because batches run one at a time.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxruntime")
        self._holding = 0  # requests taken and not yet answered: the autoscaler's measure of load
        # Serve runs __init__ on the replica's event loop, the one requests run on: the data
        # plane's server must live there too (Serve's batching queues are bound to that loop).
        self._data_plane: DataPlane | None = DataPlane(self.infer_many, app_name(version, variant))
        try:
            await self._data_plane.open(ray.util.get_node_ip_address())
        except Exception as exc:  # noqa: BLE001 - without it, routers reach this replica through Serve's handle
            logger.warning("%s/%s: no data plane, only Serve's handle will reach this replica: %s", version.key, variant.name, exc)
            self._data_plane = None

    async def __del__(self) -> None:
        """Serve's graceful stop: leave the directory, let calls on their way arrive, finish those in flight."""
        if self._data_plane is not None:
            await self._data_plane.close()
            self._data_plane = None

    async def ready(self) -> bool:
        """A round trip that runs nothing: a router calls it before sending a variant traffic."""
        return True

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's hook for custom autoscaling metrics, sampled a few times a second."""
        return {REQUESTS_METRIC: self._holding}

    async def infer(self, inputs: Tensors, deadline: float | None = None) -> InferenceResult:
        """Run one request; `deadline` (time.time() seconds) skips it if it passes while queued."""
        self._holding += 1
        try:
            result = await self._queued(InferenceRequest(inputs, deadline, time.monotonic()))
        finally:
            self._holding -= 1
        if isinstance(result, Exception):
            raise result
        return result

    async def infer_many(self, requests: list[InferenceRequest]) -> list[InferenceResult | Exception]:
        """Run requests a router coalesced, in batches of at most `max_batch_size` rows, in order.

        Each request gets its own answer: its outputs, or the error that concerns it alone
        (`InferenceError`, `DeadlinePassed`), returned rather than raised so the others stand.
        A variant whose batches wait for more rows (`max_wait_ms`) queues them through Serve's
        batching, which waits for other calls' requests too; otherwise they run as they came.
        """
        # Their time in this replica starts now: requests come from a router without an arrival time.
        arrived = time.monotonic()
        requests = [replace(request, received=arrived) for request in requests]
        self._holding += len(requests)
        try:
            if self._waits:
                return list(await asyncio.gather(*(self._queued(request) for request in requests)))
            results: list[InferenceResult | Exception] = []
            for chunk in self._chunks(requests):
                results.extend(await self._run_batch(chunk))
            return results
        finally:
            self._holding -= len(requests)

    async def _queued(self, request: InferenceRequest) -> InferenceResult | Exception:
        """One request through Serve's batching queue (alone, if it cannot share a batch)."""
        if not self._batchable or request.rows > self._max_rows:
            return await self._run_alone(request)
        return await self._infer_batch(request)

    def _chunks(self, requests: list[InferenceRequest]) -> list[list[InferenceRequest]]:
        """Consecutive runs of requests that fit one batch; a request too large for one runs alone."""
        if not self._batchable:
            return [[request] for request in requests]
        chunks: list[list[InferenceRequest]] = []
        filled = 0
        for request in requests:
            if chunks and filled + request.rows <= self._max_rows:
                chunks[-1].append(request)
                filled += request.rows
            else:
                chunks.append([request])
                filled = request.rows
        return chunks

    # Sizes are set per variant in __init__; batch_size_fn makes them count rows, not requests.
    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.0, batch_size_fn=lambda batch: sum(q.rows for q in batch))
    async def _infer_batch(self, queued: list[InferenceRequest]) -> list[InferenceResult | Exception]:
        return await self._run_batch(queued)

    async def _run_batch(self, queued: list[InferenceRequest]) -> list[InferenceResult | Exception]:
        """One batch: requests whose deadline passed are skipped, the rest run in as few ORT calls as their shapes allow."""
        now = time.time()
        results: list[InferenceResult | Exception] = [
            DeadlinePassed("the deadline passed before the request's batch started") for _ in queued
        ]
        live = [i for i, item in enumerate(queued) if item.deadline is None or item.deadline > now]
        # Only requests whose non-batch dimensions agree can share one run.
        live.sort(key=lambda i: _signature(queued[i].inputs))
        for _, group in groupby(live, key=lambda i: _signature(queued[i].inputs)):
            indices = list(group)
            for index, result in zip(indices, await self._run_group([queued[i] for i in indices])):
                results[index] = result
        return results

    async def _run_group(self, group: list[InferenceRequest]) -> list[InferenceResult | InferenceError]:
        if len(group) == 1:
            return [await self._run_alone(group[0])]
        sizes = [request.rows for request in group]
        joined = {name: np.concatenate([request.inputs[name] for request in group]) for name in group[0].inputs}
        try:
            outputs, started, compute_s = await self._run(joined)
        except InferenceError:
            # One bad request must not fail the others: run each alone to find it.
            return [await self._run_alone(request) for request in group]
        bounds = list(accumulate(sizes))[:-1]
        split = {name: np.split(array, bounds) for name, array in outputs.items()}
        return [
            InferenceResult(
                {name: parts[i] for name, parts in split.items()}, len(group), sum(sizes), started - request.received, compute_s
            )
            for i, request in enumerate(group)
        ]

    async def _run_alone(self, request: InferenceRequest) -> InferenceResult | InferenceError:
        try:
            outputs, started, compute_s = await self._run(request.inputs)
        except InferenceError as exc:
            return exc
        return InferenceResult(outputs, 1, request.rows, started - request.received, compute_s)

    async def _run(self, inputs: Tensors) -> tuple[Tensors, float, float]:
        """The outputs, when the run started (time.monotonic()) and how long it took."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._timed_run, inputs)

    def _timed_run(self, inputs: Tensors) -> tuple[Tensors, float, float]:
        started = time.monotonic()  # on the ONNX Runtime thread: the hand-off to it counts as queueing
        outputs = self._runtime.run(inputs)
        return outputs, started, time.monotonic() - started


def _signature(inputs: Tensors) -> tuple:
    return tuple((name, array.shape[1:]) for name, array in sorted(inputs.items()))


def application(version: ModelVersion, variant: Variant, key_file: Path | None = None) -> Application:
    """A variant as a Serve application, its replicas placed on its pool's nodes only."""
    replicas = variant.replicas
    scaling = replicas.autoscaling
    count: dict[str, object] = (
        {"num_replicas": replicas.count}
        if scaling is None
        else {"autoscaling_config": {"initial_replicas": replicas.count, **scaling.model_dump(), "policy": POLICY}}
    )
    return VariantReplica.options(
        name=variant.name,
        **count,
        max_ongoing_requests=replicas.max_ongoing_requests,
        ray_actor_options={
            "num_cpus": replicas.num_cpus,
            "num_gpus": replicas.num_gpus,
            "resources": {pool_resource(variant.pool): REPLICA_SHARE},
        },
        # One log line per request would cost more than the request.
        logging_config={"enable_access_log": False, "log_level": "WARNING"},
    ).bind(version, variant, key_file)


def build_variant_app(args: dict) -> Application:
    """Serve's application builder for declarative configs (the `import_path` of a `VariantApp`)."""
    spec = VariantApp.model_validate(args)
    version = read_version(spec.store / spec.model / spec.version)
    if spec.verify_keys:  # the manifest read here carries the sha256 every replica checks its file against
        signing.verify(version.directory, spec.verify_keys, version.key)
    return application(version, spec.placement.apply(version.manifest.variant(spec.variant)), spec.key_file)


def deploy(version: ModelVersion, variant: Variant, key_file: Path | None = None) -> DeploymentHandle:
    """Deploy (or update) one variant; returns once its replicas are up."""
    return serve.run(application(version, variant, key_file), name=app_name(version, variant), route_prefix=None)


def deploy_all(versions: list[ModelVersion], key_file: Path | None = None) -> dict[str, DeploymentHandle]:
    """Deploy every variant at once without waiting for replicas: a variant whose pool has no
    nodes stays pending while the others serve. Returns handles by application name."""
    targets = [
        RunTarget(application(version, variant, key_file), name=app_name(version, variant), route_prefix=None)
        for version in versions
        for variant in version.manifest.variants
    ]
    handles = serve.run_many(targets, wait_for_applications_running=False)
    return {target.name: handle for target, handle in zip(targets, handles)}


def application_states() -> dict[str, AppState]:
    """Every Serve application's status (RUNNING, DEPLOYING, DEPLOY_FAILED, ...) and running replicas, by name."""
    return {
        name: AppState(
            ApplicationStatus(app.status).value,
            sum(count for deployment in app.deployments.values() for state, count in deployment.replica_states.items()
                if state == ReplicaState.RUNNING),
        )
        for name, app in serve.status().applications.items()
    }
