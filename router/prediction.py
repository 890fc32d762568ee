"""A variant's latency predicted from its tuned profile (`quiver tune`), corrected by what the router observes.

The profile holds the p50 of one batch of 1, 2, 4 … rows through an idle replica, measured
through the same path the router calls (its data plane and the replica's batching). The
requests in flight make calls as router/coalesce.py makes them: in order, as many as fit in one
batch of rows, a call ending at the first request that does not fit (so mixed sizes make more
calls than rows ÷ batch). A request sent now waits for them, one call per replica at a time
(each round costs the p50 of its largest call), then runs in its own: the last one if it fits
there and has not left yet (router/replicas.py keeps a few calls out per replica), else a new
one. A batch's p50 is interpolated between the measured sizes (extended along the last segment
above them). A variant that does not run with the profile's settings (a placement set others,
or none met the SLO and the manifest kept its own) is not predicted from it.

Two factors correct that: one for a request's own batch (another machine than the profile's,
other threads, other load), one for the rounds ahead. The second is needed: an idle replica's
latency is mostly the hop to it and back, which under load overlaps the batches ahead (the
router keeps two calls per replica out), so a round queued ahead costs a fraction of it, and
how large a fraction depends on the machine. Each answer moves both, in logarithm, by a step of
its error (observed ÷ predicted) weighted by each part's share of the prediction: a request
that found nothing in flight corrects its own batch only, as a moving average of the ratio
would; one queued behind others corrects both. Learning the own batch from queued requests
too matters under a steady load, where few find nothing in flight, and where the profiles'
ranking of the variants (measured one after another) is what budget decisions turn on. Both
drift back to 1 when no answer refreshes them.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from quiver.serving import ServingSettings, Variant


@dataclass(frozen=True)
class ProfileLatency:
    """The profile's p50 per batch size, for a variant served with `max_batch_size` rows per batch."""

    sizes: tuple[int, ...]  # ascending
    p50_ms: tuple[float, ...]
    max_batch_size: int

    @classmethod
    def of(cls, variant: Variant) -> ProfileLatency | None:
        """None when the variant has no profile that measured a batch size, or does not run as
        profiled: no setting met the SLO (the manifest kept its own), or a placement set others."""
        profile = variant.profile
        if profile is None or not profile.latency or not profile.meets_slo or not _runs_as(profile.settings, variant):
            return None
        points = sorted((point.batch_size, point.p50_ms) for point in profile.latency)
        return cls(tuple(s for s, _ in points), tuple(ms for _, ms in points), variant.batching.max_batch_size)

    def batch_ms(self, rows: int) -> float:
        """p50 of one batch of `rows` rows: linear between the measured sizes, the smallest's below them."""
        sizes, ms = self.sizes, self.p50_ms
        i = bisect_left(sizes, rows)
        if i < len(sizes) and sizes[i] == rows:
            return ms[i]
        if i == 0:
            return ms[0]
        if i == len(sizes):
            if len(sizes) == 1:
                return ms[0]
            i -= 1  # above the largest: along the last segment (never below it)
        slope = max(0.0, (ms[i] - ms[i - 1]) / (sizes[i] - sizes[i - 1]))
        return ms[i - 1] + slope * (rows - sizes[i - 1])

    def predict(self, calls: Sequence[int], rows: int, replicas: int, out: int) -> Modelled:
        """Latency of a request of `rows` rows sent while `calls` (their rows, oldest first: `calls()`)
        are in flight, on `replicas` replicas that the router keeps `out` calls out to in all."""
        replicas = max(1, replicas)
        own = rows
        if len(calls) > out and calls[-1] + rows <= self.max_batch_size:  # the last call is still queued
            own, calls = own + calls[-1], calls[:-1]
        waited = sum(self.batch_ms(max(calls[i: i + replicas])) for i in range(0, len(calls), replicas))
        return Modelled(self.batch_ms(own), waited)

    def calls(self, ahead: Iterable[int]) -> list[int]:
        """The rows of each call the requests make, in order (router/coalesce.py's `_take`)."""
        calls: list[int] = []
        for rows in ahead:
            if calls and calls[-1] + rows <= self.max_batch_size:
                calls[-1] += rows
            else:
                calls.append(rows)
        return calls


def _runs_as(settings: ServingSettings, variant: Variant) -> bool:
    """Whether each replica runs with the profiled settings (how many replicas run does not change a batch's p50)."""
    threads, batching = variant.threads, variant.batching
    served = (threads.intra_op, threads.inter_op, batching.max_batch_size, batching.max_wait_ms, variant.replicas.num_cpus)
    profiled = (settings.intra_op_threads, settings.inter_op_threads, settings.max_batch_size, settings.max_wait_ms,
                settings.cpus_per_replica)
    return served == profiled


@dataclass(frozen=True)
class Modelled:
    """A request's latency as the profile has it: its own batch, and the rounds ahead of it."""

    own_ms: float
    wait_ms: float


@dataclass
class Factor:
    """A ratio learned in logarithm (one slow outlier weighs as much as one equally fast one),
    half of it forgotten every `forget_s` unrefreshed."""

    alpha: float = 0.2
    forget_s: float = 10.0
    log_ratio: float = 0.0  # as of `sampled_at`
    sampled_at: float = 0.0

    def value(self, now: float) -> float:
        return math.exp(self._log_ratio(now))

    def step(self, log_error: float, weight: float, now: float, bounds: tuple[float, float] | None = None) -> None:
        """Move by `alpha` × `weight` of `log_error` (log of observed ÷ predicted); with weight 1
        and a prediction of this factor times a fixed figure, a moving average of the ratio."""
        learned = self._log_ratio(now) + self.alpha * weight * log_error
        if bounds is not None:
            learned = min(max(learned, math.log(bounds[0])), math.log(bounds[1]))
        self.log_ratio, self.sampled_at = learned, now

    def _log_ratio(self, now: float) -> float:
        return self.log_ratio * 0.5 ** (max(0.0, now - self.sampled_at) / self.forget_s)


# A round ahead costs between this share of the profile's figure and this many times it.
_WAIT_BOUNDS = (0.05, 20.0)


@dataclass
class Correction:
    """The two factors: a request's own batch, and the rounds ahead of it."""

    own: Factor = field(default_factory=Factor)
    wait: Factor = field(default_factory=Factor)

    def predicted_ms(self, modelled: Modelled, now: float) -> float:
        return self.own.value(now) * modelled.own_ms + self.wait.value(now) * modelled.wait_ms

    def observe(self, observed_ms: float, modelled: Modelled, now: float) -> None:
        if observed_ms <= 0 or modelled.own_ms <= 0:
            return
        own, wait = self.own.value(now) * modelled.own_ms, self.wait.value(now) * modelled.wait_ms
        log_error, share = math.log(observed_ms / (own + wait)), own / (own + wait)
        self.own.step(log_error, share, now)
        if wait > 0:
            self.wait.step(log_error, 1 - share, now, _WAIT_BOUNDS)
