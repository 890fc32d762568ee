"""Live statistics of one variant as the router sees it: the policy's predictions come from here.

Latency is an exponentially weighted moving average (EWMA) of the router's own measurements
of each call (queueing and batching included), seeded from the optimization report's p50 until
the first call returns. The prediction for one more request adds the work already in flight,
spread over the variant's replicas and batches. A variant that runs as its manifest's profile
from `quiver tune` measured it is predicted from that instead (router/prediction.py): from the
size of each request in flight and of its own, call by call, with a correction learned from
the same measurements.

An estimate nobody refreshes drifts back to the prior (half of the way every `forget_s`): a
variant measured slow while it took the whole load is then sent requests again once the policy
has moved them elsewhere, instead of keeping, forever, the latency it had under that load
(`python -m benchmarks.routing` showed the budget policy stuck on one variant without this).
Under traffic the samples come far faster than that, so the drift is negligible.

Both predict a median, and a budget is met by each request's latency, not by the median: half of
the requests sent to a variant predicted right at the budget would miss it. So the policy
scales a prediction by the 90th percentile of observed ÷ predicted over the variant's last
answers to requests of about the same size (`Overruns`): what the prediction has missed by
lately, whatever the cause (a small request queued behind large ones misses by more).
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from quiver.serving import Variant

from .prediction import Correction, Modelled, ProfileLatency


@dataclass(frozen=True)
class Ticket:
    """One call as predicted when it started: what `finished` learns from, and the metrics report."""

    serial: int
    rows: int
    predicted_ms: float
    modelled: Modelled | None  # the profile's prediction before the correction; None without a profile


@dataclass
class Overruns:
    """Observed ÷ predicted over the last answers, by request size (its rows to the next power of two)."""

    by_size: dict[int, deque[float]] = field(default_factory=dict)
    _factors: dict[int, float] = field(default_factory=dict)  # until the size's next answer

    def add(self, rows: int, ratio: float) -> None:
        size = rows.bit_length()
        self.by_size.setdefault(size, deque(maxlen=TAIL_WINDOW)).append(ratio)
        self._factors.pop(size, None)

    def factor(self, rows: int) -> float:
        """Their 90th percentile for requests of this size; 1 until it has enough answers."""
        size = rows.bit_length()
        if size not in self._factors:
            ratios = sorted(self.by_size.get(size, ()))
            enough = len(ratios) >= TAIL_MIN_ANSWERS
            self._factors[size] = ratios[int(TAIL_QUANTILE * (len(ratios) - 1))] if enough else 1.0
        return self._factors[size]


@dataclass
class VariantStats:
    replicas: int = 1
    batch_size: int = 1
    prior_ms: float = 1.0  # until measured: the report's p50, or a guess
    alpha: float = 0.2  # weight of the newest sample
    # Queued work beyond this many full batches per replica counts as saturated.
    saturation_batches: float = 2.0
    # Requests in flight beyond which this variant sheds load (normal priority).
    queue_limit: int = 256
    # After a call finds no replica, the variant is passed over this long (when others can serve).
    cooldown_s: float = 5.0
    # An unrefreshed estimate moves half of the way back to the prior every this many seconds.
    forget_s: float = 1.0
    clock: Callable[[], float] = time.monotonic
    profile: ProfileLatency | None = None  # from the manifest's profile: predictions come from it
    per_replica: int = 2  # calls the router keeps out to each replica (router/replicas.py)
    variant: Variant | None = None  # the settings above are this one's (`serve`)
    correction: Correction = field(default_factory=Correction)
    in_flight: int = 0
    ahead: dict[int, int] = field(default_factory=dict)  # the rows of each call in flight, by ticket serial, oldest first
    serials: Iterator[int] = field(default_factory=itertools.count)
    calls: list[int] | None = None  # the calls `ahead` makes (ProfileLatency.calls), until it changes
    ewma_ms: float | None = field(default=None)  # as of `sampled_at`
    sampled_at: float = 0.0
    # A variant the budget passes over is sent a request after this many, if it had none for this long (router/policy.py).
    explore_every: int = 50
    explore_after_s: float = 0.5
    skipped: int = 0  # requests the budget gave to another variant since this one's last call
    called_at: float = float("-inf")
    overruns: Overruns = field(default_factory=Overruns)
    failed_at: float | None = field(default=None)  # the last call that found no replica
    down_since: float | None = field(default=None)  # the first such call since one last answered (None if none ever did)

    def serve(self, variant: Variant, per_replica: int) -> None:
        """Take the variant's settings (a new route table may change them); what was measured stays."""
        replicas = variant.replicas
        self.variant, self.per_replica = variant, per_replica
        self.replicas, self.batch_size = replicas.count, variant.batching.max_batch_size
        self.prior_ms = variant.metrics.p50_ms if variant.metrics else 1.0
        self.profile, self.calls = ProfileLatency.of(variant), None
        self.queue_limit = replicas.count * replicas.max_queued_requests

    def started(self, rows: int = 1) -> Ticket:
        """One call of `rows` rows leaves: its prediction, for `finished`."""
        modelled = self._modelled(rows)
        predicted = self.predicted_ms(rows) if modelled is None else self.correction.predicted_ms(modelled, self.clock())
        ticket = Ticket(next(self.serials), rows, predicted, modelled)
        self.skipped, self.called_at = 0, self.clock()
        self.in_flight += 1
        self.ahead[ticket.serial] = rows
        self.calls = None
        return ticket

    def finished(self, ticket: Ticket, latency_ms: float | None, now: float | None = None) -> None:
        """The call `ticket` ended: with its latency, or with `now` when no replica answered.

        A failure teaches nothing of speed; it starts the cool-down.
        """
        self.in_flight -= 1
        self.ahead.pop(ticket.serial, None)
        self.calls = None
        if latency_ms is not None and ticket.modelled is not None:
            self.correction.observe(latency_ms, ticket.modelled, self.clock())
        if now is not None:
            self.failed_at = now
            if self.down_since is None and self.ewma_ms is not None:  # it answered before: down, not never up
                self.down_since = now
        if latency_ms is not None:
            if ticket.predicted_ms > 0:
                self.overruns.add(ticket.rows, latency_ms / ticket.predicted_ms)
            self.down_since = None
            self.ewma_ms = latency_ms if self.ewma_ms is None else self.alpha * latency_ms + (1 - self.alpha) * self.latency_ms
            self.sampled_at = self.clock()

    @property
    def latency_ms(self) -> float:
        if self.ewma_ms is None:
            return self.prior_ms
        kept = 0.5 ** ((self.clock() - self.sampled_at) / self.forget_s)
        return self.prior_ms + (self.ewma_ms - self.prior_ms) * kept

    @property
    def capacity(self) -> int:
        """Requests the replicas take in one round of batches."""
        return max(1, self.replicas * self.batch_size)

    def predicted_ms(self, rows: int = 1) -> float:
        """Latency for one more request (of `rows` rows): from the profile, corrected, where there
        is one; else the measured latency, one round per full capacity already queued ahead of it."""
        modelled = self._modelled(rows)
        if modelled is not None:
            return self.correction.predicted_ms(modelled, self.clock())
        return self.latency_ms * (1 + self.in_flight // self.capacity)

    def _modelled(self, rows: int) -> Modelled | None:
        if self.profile is None:
            return None
        if self.calls is None:  # once per change of what is in flight, not per prediction (one per candidate)
            self.calls = self.profile.calls(self.ahead.values())
        return self.profile.predict(self.calls, rows, self.replicas, self.per_replica * self.replicas)

    def passed_over(self) -> bool:
        """Count a request the budget gave to another variant; whether this one is due a request
        of its own, its prediction being what no answer has corrected lately."""
        self.skipped += 1
        return self.skipped >= self.explore_every and self.clock() - self.called_at >= self.explore_after_s

    def cooling(self, now: float) -> bool:
        return self.failed_at is not None and now - self.failed_at < self.cooldown_s

    def admits(self, priority: int) -> bool:
        """Whether one more request of this priority may queue: low priority is shed at half
        the limit, high priority is let through up to one and a half times it."""
        return self.in_flight < priority_share(priority) * self.queue_limit

    def admits_shadow(self) -> bool:
        """Whether a shadow call (router/shadow.py) may queue: below every priority, only while the
        queue is under a quarter of its limit and the variant is not saturated."""
        return self.in_flight < SHADOW_SHARE * self.queue_limit and not self.saturated

    @property
    def saturated(self) -> bool:
        return self.in_flight >= self.saturation_batches * self.capacity


SHADOW_SHARE = 0.25  # below low priority's half
TAIL_QUANTILE, TAIL_WINDOW, TAIL_MIN_ANSWERS = 0.9, 200, 20


def priority_share(priority: int) -> float:
    """The share of a queue limit a request of this priority may fill: low priority is shed first."""
    return 0.5 if priority < 0 else 1.5 if priority > 0 else 1.0
