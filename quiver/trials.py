"""`quiver tune`'s trials, through the real serving path: a Serve replica and the router's calls to it.

Each trial deploys the variant with the trial's settings on a local Ray node of the variant's
pool (Serve updates the application in place) and drives it with a closed loop of requests
through the router's replica layer (router/replicas.py: coalescing, then `infer_many` on the
Serve handle, the path `quiver serve --no-direct` takes), so batching, Serve's queueing and
ONNX Runtime's threads all count, not ONNX Runtime alone. It lives beside the CLI because
serving/ never imports the router.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from types import TracebackType

import numpy as np

from quiver.serving import (
    BatchLatency,
    InferenceRequest,
    ModelVersion,
    ServingSettings,
    TensorSpec,
    Variant,
    app_name,
    deploy,
    node_resources,
)
from quiver.serving.tune import Trial, TuneError

# Where a variable dimension other than the batch axis (a sequence length) needs a size.
VARIABLE_DIM = 16
_WAIT_S = 60.0  # a request's wait limit in the router's queue: far above any trial's latency


class ServePath:
    """A local Ray instance whose one node, of `cpus` CPUs, belongs to every pool of the variants
    tuned; a context manager. One variant is deployed at a time (`release` takes it down).
    `key_file` decrypts variants encrypted at rest."""

    def __init__(self, version: ModelVersion, pools: list[str], cpus: int, key_file: Path | None = None) -> None:
        self.version, self.pools, self.cpus, self.key_file = version, pools, cpus, key_file
        self._loop = asyncio.new_event_loop()
        from quiver.router.metrics import RouterMetrics

        self._metrics = RouterMetrics()
        self._current = None  # the VariantReplicas of what is deployed now

    def __enter__(self) -> ServePath:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("RAY_SERVE_CONTROL_LOOP_INTERVAL_S", "0.5")  # as quiver serve: less idle CPU
        import ray
        from ray import serve

        ray.init(address="local", num_cpus=self.cpus, resources=node_resources(self.pools),
                 include_dashboard=False, logging_level=logging.WARNING)
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
        serve.start(proxy_location="Disabled", logging_config={"log_level": "WARNING"})
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        import ray

        self._loop.close()
        ray.shutdown()  # ends the replicas at once; the instance is ours alone

    def sweep(self, variant: Variant, settings: ServingSettings, seconds: float, loads: list[int],
              slo_p99_ms: float | None = None) -> list[Trial]:
        """Deploy with `settings`, then measure closed loops of `loads` clients (ascending), sharing
        `seconds`; a load whose p99 is above the SLO ends the sweep, as larger ones only queue more."""
        points = []
        for clients in loads:
            points.append(self.measure(variant, settings, seconds / len(loads), clients))
            if slo_p99_ms is not None and points[-1].p99_ms > slo_p99_ms:
                break
        return points

    def measure(self, variant: Variant, settings: ServingSettings, seconds: float, clients: int) -> Trial:
        """Deploy with `settings`, then `clients` clients each send one-row requests for `seconds`."""
        replicas = self._deployed(variant, settings)
        # The first fifth of the time warms up (sessions' first runs, Serve's handle finding the replicas).
        latencies, rows, window = self._loop.run_until_complete(
            _closed_loop(replicas, self._inputs(1), clients, seconds, warm_s=seconds / 5)
        )
        if not latencies:
            raise TuneError(f"no request finished within a trial of {seconds:.1f} s with {settings}")
        p50, p99 = np.percentile(latencies, [50, 99])
        return Trial(settings, float(p50), float(p99), rows / window, len(latencies), clients)

    def latency_by_batch(self, variant: Variant, settings: ServingSettings, seconds_each: float) -> list[BatchLatency]:
        """p50/p99 of one request at a time, for batches of 1, 2, 4 … up to the batch size."""
        replicas = self._deployed(variant, settings)
        sizes = [2**i for i in range(settings.max_batch_size.bit_length()) if 2**i <= settings.max_batch_size]
        profile = []
        for size in sizes:
            latencies, _, _ = self._loop.run_until_complete(
                _closed_loop(replicas, self._inputs(size), 1, seconds_each, warm_s=0.0)
            )
            p50, p99 = np.percentile(latencies, [50, 99])
            profile.append(BatchLatency(batch_size=size, p50_ms=float(p50), p99_ms=float(p99)))
        return profile

    def release(self, variant: Variant) -> None:
        """Take the variant's application down: its replicas would take CPUs from the next variant's."""
        from ray import serve

        serve.delete(app_name(self.version, variant))
        self._current = None

    def _deployed(self, variant: Variant, settings: ServingSettings):  # noqa: ANN202 - router.replicas.VariantReplicas
        from quiver.router.replicas import VariantReplicas
        from quiver.router.routes import VariantRoute

        # A trial measures a fixed number of replicas: Serve's autoscaler would change it midway.
        variant = settings.apply(variant.model_copy(update={"replicas": variant.replicas.model_copy(update={"autoscaling": None})}))
        if self._current is not None and self._current.route.variant == variant:
            return self._current  # deployed as asked already: a redeployment would start new replicas
        if self._current is not None and self._current.route.variant.replicas != variant.replicas:
            # Serve's rolling update keeps old replicas until new ones run: a layout that needs
            # the node's every CPU would wait for them forever. Another layout starts afresh.
            self.release(variant)
        manifest = self.version.manifest
        metrics = self._metrics.variant(manifest.name, manifest.version, variant.name, variant.pool)
        self._current = VariantReplicas(VariantRoute(self.version, variant, deploy(self.version, variant, self.key_file)), None, metrics)
        return self._current

    def _inputs(self, rows: int) -> dict[str, np.ndarray]:
        generator = np.random.default_rng(0)
        return {spec.name: _array(spec, rows, generator) for spec in self.version.manifest.inputs}


def _array(spec: TensorSpec, rows: int, generator: np.random.Generator) -> np.ndarray:
    shape = [rows if i == 0 and dim == -1 else VARIABLE_DIM if dim == -1 else dim for i, dim in enumerate(spec.shape)]
    dtype = spec.datatype.numpy
    if np.issubdtype(dtype, np.floating):
        return generator.standard_normal(shape).astype(dtype)
    return np.zeros(shape, dtype)  # ids and masks: 0 is a valid token, index and flag


async def _closed_loop(replicas, inputs: dict[str, np.ndarray], clients: int, seconds: float,  # noqa: ANN001
                       warm_s: float) -> tuple[list[float], int, float]:
    """Latencies (ms) and rows answered after `warm_s`, and that window's length in seconds."""
    await replicas.submit(InferenceRequest(inputs), _WAIT_S)  # once the replicas answer: not their start-up
    started = time.monotonic()
    counted_from, ends = started + warm_s, started + seconds
    latencies: list[float] = []
    answered = [0]
    rows = next(iter(inputs.values())).shape[0]

    async def client() -> None:
        while (now := time.monotonic()) < ends:
            try:
                await replicas.submit(InferenceRequest(inputs), _WAIT_S)
            except Exception as exc:  # noqa: BLE001 - the model's error, a lost replica: the trial cannot stand
                raise TuneError(f"a trial request failed: {exc!r}") from exc
            if now >= counted_from:
                latencies.append((time.monotonic() - now) * 1000)
                answered[0] += rows

    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, answered[0], max(time.monotonic() - counted_from, 1e-9)
