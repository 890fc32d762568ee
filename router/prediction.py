"""A variant's latency predicted from its tuned profile (`quiver tune`), corrected by what the router observes.

The profile holds the p50 of one batch of 1, 2, 4 … rows through an idle replica, measured
through the same path the router calls (its data plane and the replica's batching). A request
sent now waits for the batch each replica is running (the rows in flight, up to one batch per
replica), then for every full round of batches queued behind it, then runs in its own batch
with the queued rows left over; each round costs the profile's p50 at its batch size
(interpolated between the measured sizes, extended along the last segment above them).

What is not modelled (another machine than the profile's, other threads than it was measured
with, the router's own load) is a factor learned from each answer: observed ÷ modelled, a
moving average of its logarithm, which drifts back to 1 when no answer refreshes it.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass

from quiver.serving import Profile


@dataclass(frozen=True)
class ProfileLatency:
    """The profile's p50 per batch size, for a variant served with `max_batch_size` rows per batch on `replicas` replicas."""

    sizes: tuple[int, ...]  # ascending
    p50_ms: tuple[float, ...]
    max_batch_size: int
    replicas: int

    @classmethod
    def of(cls, profile: Profile | None, max_batch_size: int, replicas: int) -> ProfileLatency | None:
        """None when there is no profile or it measured no batch size."""
        if profile is None or not profile.latency:
            return None
        points = sorted((point.batch_size, point.p50_ms) for point in profile.latency)
        return cls(tuple(s for s, _ in points), tuple(ms for _, ms in points), max_batch_size, max(1, replicas))

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

    def predict_ms(self, rows_ahead: int, rows: int) -> float:
        """Latency of a request of `rows` rows sent with `rows_ahead` rows in flight before it."""
        batch, replicas = self.max_batch_size, self.replicas
        round_rows = batch * replicas
        running = min(rows_ahead, round_rows)
        behind = rows_ahead - running + rows  # the queued rows and this request's, in rounds after the running one
        full_rounds = math.ceil(behind / round_rows) - 1
        own = behind - full_rounds * round_rows
        waited = self.batch_ms(math.ceil(running / replicas)) if running else 0.0
        return waited + full_rounds * self.batch_ms(batch) + self.batch_ms(max(rows, min(batch, math.ceil(own / replicas))))


@dataclass
class Correction:
    """observed ÷ modelled latency, learned: a moving average of its logarithm (one slow outlier
    weighs as much as one equally fast one), half of it forgotten every `forget_s` unrefreshed."""

    alpha: float = 0.2
    forget_s: float = 10.0
    log_ratio: float = 0.0  # as of `sampled_at`
    sampled_at: float = 0.0

    def factor(self, now: float) -> float:
        return math.exp(self._log_ratio(now))

    def observe(self, observed_ms: float, modelled_ms: float, now: float) -> None:
        if observed_ms <= 0 or modelled_ms <= 0:
            return
        sample = math.log(observed_ms / modelled_ms)
        self.log_ratio = self.alpha * sample + (1 - self.alpha) * self._log_ratio(now)
        self.sampled_at = now

    def _log_ratio(self, now: float) -> float:
        return self.log_ratio * 0.5 ** (max(0.0, now - self.sampled_at) / self.forget_s)
