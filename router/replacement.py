"""Requests wait for a variant's replacement replica instead of failing, while one may come.

When a variant's last replica dies (the OOM killer, a crash), Serve starts another within
seconds. A request that found no replica would fail UNAVAILABLE meanwhile; what a client that
sets a deadline (and gRPC's `waitForReady`) expects is to be answered late rather than not at
all. So the dispatcher (router/dispatch.py) parks such a request here and tries again once the
router learns of a replica that can answer: a change of the replica directory
(router/endpoints.py), a poll of Serve's status (router/readiness.py) or a lost variant answering
its probes again (router/health.py) wakes every waiter, which then asks readiness.

A request waits only
- while a variant it may be served by is *being replaced*: it answered, then failed, no more
  than `window_s` ago (a variant that never came up, say a pool without nodes, or one down for
  longer, fails fast as before: nothing suggests a replica is on its way);
- within its deadline, less a margin so that it is told why (UNAVAILABLE with the reason)
  rather than timing out blind;
- while the waiting room has space: per model version, as many requests as its variants' queue
  limits together, low priority shed at half, high priority let in up to one and a half times
  (as admission does: router/stats.py), so a burst during an outage cannot exhaust memory.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from .stats import VariantStats, priority_share

# A waiter gives up this long before its deadline, to answer with the reason while the client still listens.
DEADLINE_MARGIN_S = 0.05


class Changes:
    """A broadcast: `notify` wakes everyone waiting at that moment."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout_s: float) -> None:
        """Return at the next `notify`, or after `timeout_s`."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout_s)
        except asyncio.TimeoutError:
            pass


class ReplacementWait:
    """The waiting room; `clock` must be the dispatcher's (its stats and deadlines are on it)."""

    def __init__(self, window_s: float, changes: Changes, clock: Callable[[], float] = time.perf_counter) -> None:
        self.window_s = window_s
        self._changes = changes
        self._clock = clock
        self._waiting: dict[str, int] = {}

    def replacing(self, stats: VariantStats, now: float) -> bool:
        """Whether the variant answered, then failed, within the window: a replacement may be on its way."""
        return stats.down_since is not None and now - stats.down_since < self.window_s

    async def wait(
        self,
        version: str,
        allowed: Sequence[VariantStats],
        answers: Callable[[], bool],
        priority: int,
        expires: float | None,
    ) -> bool:
        """Wait until `answers()` (some allowed variant can answer again): True; False at once
        if no allowed variant is being replaced or the waiting room is full, or later when the
        window or the deadline ran out first."""
        now = self._clock()
        replacing = [stats for stats in allowed if self.replacing(stats, now)]
        if not replacing:
            return False
        until = max(stats.down_since for stats in replacing) + self.window_s
        if expires is not None:
            until = min(until, expires - DEADLINE_MARGIN_S)
        room = priority_share(priority) * sum(stats.queue_limit for stats in allowed)
        if until <= now or self._waiting.get(version, 0) >= room:
            return False
        self._waiting[version] = self._waiting.get(version, 0) + 1
        try:
            while (left := until - self._clock()) > 0:
                await self._changes.wait(left)
                if answers():
                    return True
            return False
        finally:
            self._waiting[version] -= 1
