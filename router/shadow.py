"""Shadow comparisons: a sample of what cheaper variants answered, asked again of the reference, off the client's path.

After dispatch answers a request (router/dispatch.py calls `offer`, which only samples and
queues), a variant that is not its version's reference (`Manifest.reference`: fp32) has a
`shadow.sample_rate` share of its requests sent to the reference by a few background workers,
and the two outputs compared row by row (router/agreement.py). Shadow work never delays or
fails a client's request:

- it waits in a bounded queue; a full queue drops it (counted, `reason="queue"`);
- a reference whose queue is past a quarter of its limit, or saturated, is not asked: below
  every client priority (`VariantStats.admits_shadow`; counted, `reason="load"`);
- nor is any while the router's own event loop lags (`max_loop_lag_s`, measured every
  `lag_interval_s`) with client requests in flight: where the router's CPU is what saturates,
  requests wait before dispatch and no variant's queue shows it (counted, `reason="load"`);
- a call that fails is counted (`reason="error"`) and never retried.

Routing reads `accuracy`: once a variant has `min_samples` rows, its live accuracy is the
reference's offline accuracy less the disagreement at the window's lower bound (a variant can
only be wrong where the reference is, or where they disagree), and the policy takes the lower
of that and the offline number. A variant whose live accuracy (point estimate) falls more than
`margin` below its offline accuracy is reported: a log line with the numbers, the
`quiver_shadow_drifted` gauge, and the live accuracy that `quiver.min_accuracy`'s refusals
list; with `shadow.exclude` it is passed over while another variant can serve (`excluded`).

A rollout's Shadow step uses the same queue, shedding and workers the other way round: the
route table names a version that takes no traffic yet and the serving version it mirrors
(router/traffic.py, `shadow`); a `sample_rate` share of the serving version's answered requests
is sent to the new version's variant the policy would pick, and its outputs compared with the
answer the client got, which is the reference here. Counters per (model, version, variant,
reference_version) say how many rows were compared and how far they agreed, how many calls
failed and how long they took: the operator's Shadow gates read their difference over the step
(operator/controller/gates.py). The new version answers no client meanwhile (router/operations.py).

The same workers write the capture (serving/capture.py): a `--capture-rate` share of the
requests whose token allows it (router/auth.py), with the reference's outputs (asked of the
reference for requests another variant answered). The route table may set a model's own rate
and bound (`capture`, from its ModelDeployment's spec.capture).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from quiver.serving import InferenceResult
from quiver.serving.capture import CaptureSettings, VersionCapture
from quiver.serving.manifest import Shadow as ShadowSpec
from quiver.serving.manifest import ShadowMetric, shadow_metric
from quiver.serving.requests import rows

from .agreement import Window, row_scores
from .errors import RouterError
from .metrics import RouterMetrics
from .routes import VariantRoute, VersionRoutes
from .traffic import TrafficSplit

logger = logging.getLogger(__name__)

Tensors = dict[str, np.ndarray]


@dataclass(frozen=True)
class ShadowSettings:
    """The router's side of shadowing; each variant's own spec (manifest or route table) says the rest."""

    sample_rate: float | None = None  # for variants whose spec sets none; None: the spec's default
    queue: int = 256  # requests waiting for a shadow call, at most
    workers: int = 4  # shadow calls in flight, at most
    window: int = 2000  # rows the live agreement is over
    max_loop_lag_s: float = 0.01  # a timer this late means the router is saturated: shadow work stops
    lag_interval_s: float = 0.05

    def __post_init__(self) -> None:
        if self.sample_rate is not None and not 0 <= self.sample_rate <= 1:
            raise ValueError(f"--shadow-rate: {self.sample_rate} is outside [0, 1]")


@dataclass
class _Job:
    version: VersionRoutes
    route: VariantRoute  # the variant that answered
    inputs: Tensors
    outputs: Tensors
    compare: bool
    capture: bool
    mirror: VersionRoutes | None = None  # a version in its Shadow step, asked instead of the reference


class _Tracked:
    """One variant's comparisons, made from its spec (`source`, None for the defaults)."""

    def __init__(self, source: ShadowSpec | None, spec: ShadowSpec, output: str, metric: ShadowMetric | None, window: int) -> None:
        self.source, self.spec, self.output, self.metric = source, spec, output, metric
        self.enabled = metric is not None and spec.sample_rate > 0
        self.window = Window(metric or ShadowMetric.TOP1, window)
        self.drifted = False


class Shadow:
    def __init__(
        self,
        settings: ShadowSettings,
        metrics: RouterMetrics,
        call: Callable[[VariantRoute, Tensors], Awaitable[InferenceResult]],
        admits: Callable[[VariantRoute], bool],
        busy: Callable[[], bool] = lambda: True,
        capture: CaptureSettings | None = None,
        rng: random.Random | None = None,
        split: Callable[[], TrafficSplit] = TrafficSplit,
        lookup: Callable[[str, str], VersionRoutes] | None = None,
        pick: Callable[[VersionRoutes], VariantRoute] | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._call = call  # to the reference (or a version in its Shadow step), without retry
        self._admits = admits  # whether the variant takes a shadow call now
        self._busy = busy  # whether client requests are in flight
        self._capture = capture
        self._split = split  # the route table's shadow and capture sections
        self._lookup = lookup  # a version's routes (None: no Shadow steps here)
        self._pick = pick  # the variant of a version the policy would pick for a request without hints
        self._model_captures: dict[str, CaptureSettings] = {}
        self._incomparable: set[tuple[str, str, str, str]] = set()  # Shadow steps whose outputs cannot be compared
        self._rng = rng or random.Random()
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(settings.queue)
        self._workers: list[asyncio.Task] = []
        self._lagging = False
        self._tracked: dict[tuple[str, str, str], _Tracked] = {}
        self._captures: dict[tuple[str, str], VersionCapture] = {}
        self._writing = asyncio.Lock()

    def offer(self, version: VersionRoutes, route: VariantRoute, inputs: Tensors, outputs: Tensors, may_capture: bool) -> None:
        """A request `route` answered: sample it for comparison, capture and Shadow steps (cheap; on the client's path)."""
        split = self._split()
        model = version.manifest.name
        for name, mirror in split.shadow.get(model, {}).items():
            if mirror.of == version.manifest.version and self._lookup is not None and self._rng.random() < mirror.sample_rate:
                try:
                    target = self._lookup(model, name)
                except RouterError:  # not deployed here (any more): nothing to mirror to
                    continue
                self._enqueue(_Job(version, route, inputs, outputs, True, False, target), (model, name, ""))
        reference = version.manifest.reference
        if reference is None:
            return
        tracked = self._track(route) if route.variant.name != reference.name else None
        compare = tracked is not None and self._rng.random() < tracked.spec.sample_rate
        capture = self._capture_settings(model, split)
        capture_this = capture is not None and may_capture and self._rng.random() < capture.sample_rate
        if compare or capture_this:
            self._enqueue(_Job(version, route, inputs, outputs, compare, capture_this), route.key)

    def _enqueue(self, job: _Job, labels: tuple[str, str, str]) -> None:
        if not self._workers:
            self._workers = [asyncio.create_task(self._work(), name=f"quiver-shadow-{i}") for i in range(self._settings.workers)]
            self._workers.append(asyncio.create_task(self._watch_lag(), name="quiver-shadow-lag"))
        if self._lagging and self._busy():
            self._metrics.shadow_shed.labels(*labels, "load").inc()
            return
        if self._queue.full():
            self._metrics.shadow_shed.labels(*labels, "queue").inc()
            return
        # Inputs in a client's shared memory are views of a region it reuses once answered: a queued
        # job keeps a copy (only the sampled share pays), or it would compare and capture the next input.
        job.inputs = {name: np.array(array) for name, array in job.inputs.items()}
        self._queue.put_nowait(job)

    def _capture_settings(self, model: str, split: TrafficSplit) -> CaptureSettings | None:
        """The router's capture settings, or the model's own where the route table sets them."""
        own = split.capture.get(model)
        if self._capture is None or own is None:
            return self._capture
        found = self._model_captures.get(model)
        max_bytes = self._capture.max_bytes if own.max_mb is None else int(own.max_mb * (1 << 20))
        if found is None or (found.sample_rate, found.max_bytes) != (own.rate, max_bytes):
            found = self._model_captures[model] = dataclasses.replace(self._capture, sample_rate=own.rate, max_bytes=max_bytes)
        return found

    def accuracy(self, version: VersionRoutes, route: VariantRoute) -> float | None:
        """The variant's accuracy for routing: the offline one, or lower where live traffic says so."""
        offline = route.variant.metrics.accuracy if route.variant.metrics else None
        tracked = self._tracked.get(route.key)
        if tracked is None or not tracked.enabled or tracked.window.count < tracked.spec.min_samples:
            return offline
        live = _reference_accuracy(version) - (1 - tracked.window.lower_bound)
        return live if offline is None else min(offline, live)

    def excluded(self, route: VariantRoute) -> bool:
        """Whether routing passes this variant over while another can serve: drifted, with `shadow.exclude`."""
        tracked = self._tracked.get(route.key)
        return tracked is not None and tracked.drifted and tracked.spec.exclude

    async def close(self) -> None:
        """Stop the workers (calls in flight are dropped) and write what the capture holds."""
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        for capture in self._captures.values():
            await self._write(capture)

    def _track(self, route: VariantRoute) -> _Tracked | None:
        """The variant's comparisons (None: not compared); a new route table may bring a new spec."""
        found = self._tracked.get(route.key)
        if found is None or found.source != route.variant.shadow:
            found = self._tracked[route.key] = self._tracking(route, found)
            if found.enabled:
                self._metrics.shadow_drifted.labels(*route.key)  # 0 from its first request on (a drift sets it)
        return found if found.enabled else None

    def _tracking(self, route: VariantRoute, old: _Tracked | None) -> _Tracked:
        rate = {} if self._settings.sample_rate is None else {"sample_rate": self._settings.sample_rate}
        spec = route.variant.shadow or ShadowSpec(**rate)
        try:
            output, metric = shadow_metric(route.manifest, route.variant.model_copy(update={"shadow": spec}))
        except ValueError as exc:
            logger.warning("%s variant %s is not compared with its reference: %s", route.version.key, route.variant.name, exc)
            return _Tracked(route.variant.shadow, spec, "", None, self._settings.window)
        tracked = _Tracked(route.variant.shadow, spec, output.name, metric, self._settings.window)
        if old is not None and (old.output, old.metric) == (tracked.output, tracked.metric):  # the same comparison: keep its window
            tracked.window, tracked.drifted = old.window, old.drifted
        return tracked

    async def _watch_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(self._settings.lag_interval_s)
            self._lagging = loop.time() - start - self._settings.lag_interval_s > self._settings.max_loop_lag_s

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                await self._run(job)
            except Exception:  # noqa: BLE001 - shadow work never stops the router; details to the log
                logger.exception("%s: shadow work for variant %s failed", job.version.version.key, job.route.variant.name)

    async def _run(self, job: _Job) -> None:
        if job.mirror is not None:
            await self._mirror(job, job.mirror)
            return
        reference = job.version.variants.get(job.version.manifest.reference.name)
        if reference is None:
            return
        if reference is job.route:
            expected = job.outputs
        elif not self._admits(reference):
            self._metrics.shadow_shed.labels(*job.route.key, "load").inc()
            return
        else:
            try:
                expected = (await self._call(reference, job.inputs)).outputs
            except Exception as exc:  # noqa: BLE001 - never retried; counted
                logger.debug("%s: shadow call to %s failed: %s", job.version.version.key, reference.variant.name, exc)
                self._metrics.shadow_shed.labels(*job.route.key, "error").inc()
                return
        if job.compare:
            self._compare(job, expected)
        if job.capture:
            await self._store(job, expected)

    def _compare(self, job: _Job, expected: Tensors) -> None:
        tracked = self._tracked[job.route.key]
        assert tracked.metric is not None
        scores = row_scores(tracked.metric, job.outputs[tracked.output], expected[tracked.output], tracked.spec.tolerance)
        tracked.window.add(scores)
        labels = job.route.key
        self._metrics.shadow_comparisons.labels(*labels).inc(len(scores))
        self._metrics.shadow_agreement.labels(*labels).set(tracked.window.agreement)
        self._metrics.shadow_lower_bound.labels(*labels).set(tracked.window.lower_bound)
        self._metrics.shadow_samples.labels(*labels).set(tracked.window.count)
        self._check_drift(job, tracked)

    def _check_drift(self, job: _Job, tracked: _Tracked) -> None:
        metrics = job.route.variant.metrics
        if metrics is None or tracked.window.count < tracked.spec.min_samples:
            return
        live = _reference_accuracy(job.version) - (1 - tracked.window.agreement)
        drifted = metrics.accuracy - live > tracked.spec.margin
        if drifted == tracked.drifted:
            return
        tracked.drifted = drifted
        self._metrics.shadow_drifted.labels(*job.route.key).set(int(drifted))
        window = tracked.window
        numbers = (
            f"live {tracked.metric.value} agreement {window.agreement:.4f} (lower bound {window.lower_bound:.4f}, "
            f"{window.count} rows) puts its {metrics.metric} at {live:.4f}, offline {metrics.accuracy:.4f} "
            f"(margin {tracked.spec.margin})"
        )
        key, name = job.version.version.key, job.route.variant.name
        if drifted:
            action = "; routed around while another variant can serve" if tracked.spec.exclude else ""
            logger.warning("%s variant %s drifted from its reference: %s%s", key, name, numbers, action)
        else:
            logger.warning("%s variant %s agrees with its reference again: %s", key, name, numbers)

    async def _mirror(self, job: _Job, target: VersionRoutes) -> None:
        """One mirrored request of a Shadow step: the new version's answer against the one the client got."""
        assert self._pick is not None
        try:
            route = self._pick(target)
        except RouterError:  # none of its variants can answer now: shed like a loaded one
            self._metrics.shadow_shed.labels(target.manifest.name, target.manifest.version, "", "load").inc()
            return
        labels = (*route.key, job.version.manifest.version)
        if not self._admits(route):
            self._metrics.shadow_shed.labels(*route.key, "load").inc()
            return
        start = time.perf_counter()
        try:
            outputs = (await self._call(route, job.inputs)).outputs
        except Exception as exc:  # noqa: BLE001 - the serving version answered these inputs: any failure counts against the new one
            logger.debug("%s: mirrored call to %s failed: %s", target.version.key, route.variant.name, exc)
            self._metrics.shadow_step_calls.labels(*labels, "error").inc()
            return
        self._metrics.shadow_step_calls.labels(*labels, "ok").inc()
        self._metrics.shadow_step_latency.labels(*labels).observe(time.perf_counter() - start)
        try:
            output, metric = shadow_metric(route.manifest, route.variant)
            scores = row_scores(metric, outputs[output.name], job.outputs[output.name], (route.variant.shadow or ShadowSpec()).tolerance)
        except (KeyError, ValueError) as exc:  # the versions' outputs differ: nothing to compare, every row disagrees
            if labels not in self._incomparable:  # said once, not per request
                self._incomparable.add(labels)
                logger.warning("%s variant %s cannot be compared with version %s: %s", target.version.key, route.variant.name,
                               job.version.manifest.version, exc)
            scores = np.zeros(rows(job.inputs))
        self._metrics.shadow_step_rows.labels(*labels).inc(len(scores))
        self._metrics.shadow_step_agreed.labels(*labels).inc(float(scores.sum()))

    async def _store(self, job: _Job, expected: Tensors) -> None:
        manifest = job.version.manifest
        settings = self._capture_settings(manifest.name, self._split())
        assert settings is not None
        capture = self._captures.get(job.version.version.key)
        if capture is None or capture.settings is not settings:  # new settings from the route table
            if capture is not None:
                await self._write(capture)  # what it holds, under the settings it was sampled with
            capture = self._captures[job.version.version.key] = VersionCapture(settings, manifest.name, manifest.version)
            self._metrics.capture_dropped.labels(manifest.name, manifest.version).set(capture.dropped)  # 0 from the first row on
        first = manifest.outputs[0]
        classes = len(first.shape) >= 2 and first.shape[-1] != 1
        labels = expected[first.name].reshape(len(expected[first.name]), -1).argmax(1) if classes else None
        self._metrics.capture_rows.labels(manifest.name, manifest.version).inc(rows(job.inputs))
        if capture.add(job.inputs, expected, labels):
            await self._write(capture)

    async def _write(self, capture: VersionCapture) -> None:
        arrays = capture.take()
        if arrays is None:
            return
        async with self._writing:  # one writer at a time: segments are numbered in order
            try:
                await asyncio.to_thread(capture.write, arrays)
            except OSError as exc:
                logger.warning("could not write a capture segment in %s: %s", capture.directory, exc)
        self._metrics.capture_dropped.labels(*capture.directory.parts[-2:]).set(capture.dropped)


def _reference_accuracy(version: VersionRoutes) -> float:
    reference = version.manifest.reference
    return reference.metrics.accuracy if reference is not None and reference.metrics else 1.0
