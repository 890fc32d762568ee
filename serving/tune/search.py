"""The search over a variant's serving settings: coordinate descent under a time budget.

Why not the grid: batch size (7 values) × replica layouts (3 on two cores, more on bigger
nodes) × intra-op threads (2-4) × batch wait (4) × inter-op threads (2) is hundreds of points,
each a redeployment plus a measurement of seconds. The settings interact mildly — the batch size
and the layout dominate, threads and the wait refine — so one coordinate at a time, keeping
the best value of each before moving to the next, finds a good point in Σ|values| trials per
pass instead of Π|values|. Passes repeat until one changes nothing or the budget runs out.
A challenger replaces the incumbent only when it is better by `margin` (5 %): this machine is
shared and noisy, and chasing noise would waste trials. For the same reason the winner is
confirmed at the end: it and the start (the defaults) are measured again, back to back, and the
defaults stand unless the winner beats them there too. Each point is otherwise measured once, at
its own moment, and one lucky measurement (or one unlucky one of the defaults) would be kept.

The search knows nothing of Ray: it calls `measure(settings, seconds)`, which serving/tune's
callers implement over the real serving path (quiver/trials.py). The clock is injected.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from ..manifest import ServingSettings

Objective = Literal["throughput", "latency"]
_CONFIRMATION = 2  # trials: the start and the winner, measured again


@dataclass(frozen=True)
class Trial:
    """One measured point: the settings, and what a closed loop of requests saw through them."""

    settings: ServingSettings
    p50_ms: float
    p99_ms: float
    throughput: float  # rows per second, all replicas
    requests: int
    clients: int = 1  # the closed loop's size: the offered load


def operating_point(points: list[Trial], objective: Objective, slo_p99_ms: float | None) -> Trial:
    """Of one setting's points at several loads, the one that stands for it: the most rows/s
    (`latency`: the lowest p99) within the SLO, or, where no load meets it, the lowest p99."""
    meeting = [p for p in points if slo_p99_ms is None or p.p99_ms <= slo_p99_ms]
    if not meeting:
        return min(points, key=lambda p: p.p99_ms)
    return max(meeting, key=lambda p: _score(p, objective))


class Measure(Protocol):
    def __call__(self, settings: ServingSettings, seconds: float) -> Trial: ...


@dataclass(frozen=True)
class Space:
    """The values each setting may take on a node of the pool with `cpus` CPUs."""

    cpus: int
    batch_sizes: tuple[int, ...] = (1, 4, 8, 16, 32, 64, 128)
    waits_ms: tuple[float, ...] = (0.0, 1.0, 2.0, 5.0)
    inter_op: tuple[int, ...] = (1, 2)

    @property
    def layouts(self) -> list[tuple[int, float]]:
        """(replicas, whole CPUs per replica) pairs that fit the node, fewest CPUs first."""
        pairs = [(r, float(c)) for c in range(1, self.cpus + 1) for r in range(1, self.cpus // c + 1)]
        return sorted(set(pairs), key=lambda pair: (pair[0] * pair[1], pair))

    @property
    def threads(self) -> list[int]:
        return [2**i for i in range(int(math.log2(self.cpus)) + 1)]

    def start(self) -> ServingSettings:
        """Quiver's defaults before tuning: one replica of one CPU, one thread, batches of 64, no wait."""
        return ServingSettings(intra_op_threads=1, max_batch_size=64, replicas=1, cpus_per_replica=1.0)

    def coordinates(self) -> list[list[dict]]:
        """The coordinates in the order they are tried, each as the updates it can make: the
        batch size and the replica layout first, as they move throughput most."""
        return [
            [{"max_batch_size": b} for b in self.batch_sizes],
            [{"replicas": r, "cpus_per_replica": c} for r, c in self.layouts],
            [{"intra_op_threads": t} for t in self.threads],
            [{"max_wait_ms": w} for w in self.waits_ms],
            [{"inter_op_threads": t} for t in self.inter_op],
        ]


@dataclass
class SearchResult:
    objective: Objective
    slo_p99_ms: float | None
    trials: list[Trial] = field(default_factory=list)
    out_of_budget: bool = False  # stopped by the budget rather than by a pass that changed nothing
    kept_start: Trial | None = None  # the start measured again beside the winner, which did not beat it there

    @property
    def meeting(self) -> list[Trial]:
        return [t for t in self.trials if self.slo_p99_ms is None or t.p99_ms <= self.slo_p99_ms]

    @property
    def chosen(self) -> Trial | None:
        """The best trial that meets the SLO (the start, where the confirmation kept it); None when none does."""
        if self.kept_start is not None and self.kept_start in self.meeting:
            return self.kept_start
        return max(self.meeting, key=lambda t: _score(t, self.objective), default=None)

    @property
    def fastest(self) -> Trial | None:
        """The trial with the lowest p99: what comes closest when none meets the SLO."""
        return min(self.trials, key=lambda t: t.p99_ms, default=None)


def _score(trial: Trial, objective: Objective) -> tuple[float, float]:
    return (trial.throughput, -trial.p99_ms) if objective == "throughput" else (-trial.p99_ms, trial.throughput)


def search(
    space: Space,
    measure: Measure,
    *,
    objective: Objective = "throughput",
    slo_p99_ms: float | None = None,
    budget_s: float,
    trial_s: float,
    margin: float = 0.05,
    clock: Callable[[], float] = time.monotonic,
    progress: Callable[[Trial, SearchResult], None] = lambda trial, result: None,
) -> SearchResult:
    """Coordinate descent from `space.start()`, then the confirmation. A trial costs its deployment
    besides `trial_s` of measuring: none starts unless the longest trial so far (at least
    `trial_s`) still fits in what is left of `budget_s`, with the confirmation's two kept back."""
    result = SearchResult(objective, slo_p99_ms)
    measured: dict[ServingSettings, Trial] = {}
    deadline = clock() + budget_s
    longest = [trial_s]

    def trial(settings: ServingSettings, again: bool = False) -> Trial | None:
        if settings in measured and not again:
            return measured[settings]
        if deadline - clock() < longest[0] * (1 if again else 1 + _CONFIRMATION):
            result.out_of_budget = True
            return None
        began = clock()
        found = measured[settings] = measure(settings, trial_s)
        longest[0] = max(longest[0], clock() - began)
        result.trials.append(found)
        progress(found, result)
        return found

    def better(challenger: Trial, incumbent: Trial) -> bool:
        fits = [slo_p99_ms is None or t.p99_ms <= slo_p99_ms for t in (challenger, incumbent)]
        if fits[0] != fits[1]:
            return fits[0]
        if not fits[0]:  # neither meets the SLO: the one nearer to it
            return challenger.p99_ms < incumbent.p99_ms * (1 - margin)
        if objective == "throughput":
            return challenger.throughput > incumbent.throughput * (1 + margin)
        return challenger.p99_ms < incumbent.p99_ms * (1 - margin)

    start = best = trial(space.start())
    changed = best is not None
    while changed and not result.out_of_budget:
        changed = False
        for updates in space.coordinates():
            for update in updates:
                settings = best.settings.model_copy(update=update)
                found = trial(ServingSettings.model_validate(settings.model_dump()))
                if found is None:
                    break
                if better(found, best):
                    best, changed = found, True
            if result.out_of_budget:
                break
    if start is not None and best.settings != start.settings:
        again = trial(start.settings, again=True)
        winner = trial(best.settings, again=True) if again else None
        if again and winner and not better(winner, again):
            result.kept_start = again
    return result
