"""Triton's inference statistics, per model version, as this router has seen them since it started.

Dispatch (router/dispatch.py `_call`) records every call to a replica when it ends, where it
observes the call's Prometheus metrics; the transports read a snapshot (the gRPC servicer's
`ModelStatistics`; a REST transport can encode the same snapshot). Nothing here knows gRPC.

What the numbers mean, in Triton's terms (its statistics extension):
- success / fail: calls to replicas that answered / failed, and the router's time for each, from
  dispatch to answer. A request refused before dispatch (bad input, unknown model, shed load) is
  not a call: Prometheus counts it (`quiver_rejected_requests`). A request retried on another
  replica counts each of its calls.
- queue and compute_infer: what the replica reported for each answered request (its wait for its
  batch, its batch's ONNX Runtime call). Replicas do not time input and output handling apart from
  that call: compute_input and compute_output count each answer with zero time, since Triton's
  readers (perf_analyzer) refuse statistics whose three compute counts differ.
- inference_count: rows answered (each row of a batched request counts, as Triton counts);
  1 per request for a model that does not batch.
- execution_count: the replica batches that served these requests; each request adds its share,
  1 / the requests in its batch, so the count is exact when this router sent the whole batch.
- last_inference: wall-clock milliseconds since the epoch of the last answer.

A router only knows its own calls, and forgets them when it restarts: behind several routers each
one reports its share. A version that has not been called yet reports zeros.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import grpc

from quiver.serving import InferenceRequest, InferenceResult, Manifest


@dataclass(frozen=True)
class Duration:
    """A count of events and their summed duration (Triton's `StatisticDuration`)."""

    count: int = 0
    ns: int = 0


@dataclass(frozen=True)
class VersionStatistics:
    """One model version's statistics (Triton's `ModelStatistics`, less what Quiver doesn't measure)."""

    name: str
    version: str
    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: Duration = Duration()
    fail: Duration = Duration()
    queue: Duration = Duration()
    compute_input: Duration = Duration()
    compute_infer: Duration = Duration()
    compute_output: Duration = Duration()


class _Running:
    """One version's sums as they grow: plain fields added to in place, since every answered request
    passes here (a frozen snapshot per request cost ~30 µs of the router's CPU)."""

    __slots__ = ("last_inference_ms", "inference_count", "executions", "success", "fail", "queue", "compute_infer")

    def __init__(self) -> None:
        self.last_inference_ms = self.inference_count = 0
        self.executions = 0.0  # fractional: each request's share of its batch
        # [count, seconds] each
        self.success, self.fail, self.queue, self.compute_infer = [0, 0.0], [0, 0.0], [0, 0.0], [0, 0.0]

    def snapshot(self, name: str, version: str) -> VersionStatistics:
        answered = Duration(self.success[0], 0)
        return VersionStatistics(
            name, version, self.last_inference_ms, self.inference_count, round(self.executions),
            success=_duration(self.success), fail=_duration(self.fail), queue=_duration(self.queue),
            compute_input=answered, compute_infer=_duration(self.compute_infer), compute_output=answered,
        )


class InferenceStatistics:
    """Every model version's statistics, from its first call on (router/metrics.py owns the one instance)."""

    def __init__(self, wall_clock: Callable[[], float] = time.time) -> None:
        self._wall_clock = wall_clock
        self._versions: dict[tuple[str, str], _Running] = {}

    def finished(
        self, manifest: Manifest, code: grpc.StatusCode, seconds: float, request: InferenceRequest, result: InferenceResult | None
    ) -> None:
        """A call to one of `manifest`'s variants ended with `code` after `seconds`; `result` is its answer (None if it failed)."""
        key = (manifest.name, manifest.version)
        running = self._versions.get(key)
        if running is None:
            running = self._versions[key] = _Running()
        if code is not grpc.StatusCode.OK or result is None:
            _add(running.fail, seconds)
            return
        running.last_inference_ms = round(1000 * self._wall_clock())
        running.inference_count += request.rows if manifest.batchable else 1
        running.executions += 1 / max(1, result.batch_requests)
        _add(running.success, seconds)
        _add(running.queue, result.queue_s)
        _add(running.compute_infer, result.compute_s)

    def snapshot(self, name: str, version: str) -> VersionStatistics:
        """One version's statistics so far (zeros if it was never called)."""
        running = self._versions.get((name, version))
        return running.snapshot(name, version) if running is not None else VersionStatistics(name, version)

    def served(self, models: Mapping[str, Iterable[str]], name: str = "", version: str = "") -> list[VersionStatistics]:
        """The statistics of the versions served (`models`: name → versions) that a request selects,
        as Triton selects them: an empty name is every model, an empty version every version."""
        return [
            self.snapshot(model, v)
            for model, versions in models.items()
            if not name or model == name
            for v in versions
            if not version or v == version
        ]


def _add(sums: list, seconds: float) -> None:
    sums[0] += 1
    sums[1] += seconds


def _duration(sums: list) -> Duration:
    return Duration(sums[0], max(0, round(sums[1] * 1e9)))
