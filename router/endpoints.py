"""The replicas' direct addresses, as the replica directory lists them, and the router's connections to them.

Serving's replica directory (serving/directory.py) is followed with a long poll: one Ray call
per change, or one every half minute when nothing changes. Each replica listed gets a client
with a persistent connection (serving/dataplane.py), kept while the directory lists it.

A call goes to one of its variant's replicas by the power of two choices: of two picked at
random, the one with fewer calls in flight. A replica whose call failed is passed over for
`cooldown_s`, or until it registers anew (a restarted replica has a new identity); one that
died drops out of the directory within seconds anyway. While a variant has no direct address
(the directory unreachable, every replica cooling down), its calls go through Serve's handle.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence

from quiver.serving import (
    DataPlaneClient,
    DirectoryUnavailable,
    Endpoint,
    InferenceRequest,
    InferenceResult,
    ReplicaUnreachable,
    listen_directory,
)

logger = logging.getLogger(__name__)

Listen = Callable[[int | None, float], Awaitable[tuple[int, list[Endpoint]]]]


class DirectReplica:
    """One replica's data plane as this router uses it: its channel, its calls in flight, its last failure."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.client = DataPlaneClient(endpoint)
        self.in_flight = 0
        self.failed_at: float | None = None


class Endpoints:
    def __init__(
        self,
        listen: Listen = listen_directory,
        cooldown_s: float = 5.0,
        poll_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._listen = listen
        self._on_change = on_change  # told when the table changes (router/replacement.py: requests waiting for a replica)
        self._cooldown_s = cooldown_s
        self._poll_s = poll_s
        self._clock = clock
        self._rng = rng or random.Random()
        self._epoch: int | None = None
        self._by_app: dict[str, list[DirectReplica]] = {}
        self._closing: set[asyncio.Task] = set()
        self._failing = False

    def live(self, app: str) -> list[DirectReplica]:
        """The variant's replicas that may take a call now."""
        now = self._clock()
        return [r for r in self._by_app.get(app, ()) if r.failed_at is None or now - r.failed_at >= self._cooldown_s]

    def serves(self, app: str) -> bool:
        """Whether the variant has a replica that may take a call now."""
        return bool(self.live(app))

    def unreachable(self, app: str) -> int:
        """How many of the variant's replicas are passed over after a failed call."""
        return self.listed(app) - len(self.live(app))

    def listed(self, app: str) -> int:
        """How many of the variant's replicas the directory lists."""
        return len(self._by_app.get(app, ()))

    @property
    def directory_up(self) -> bool:
        """Whether the last read of the directory succeeded (the addresses known serve meanwhile)."""
        return not self._failing

    def pick(self, app: str) -> DirectReplica | None:
        """The less busy of two live replicas picked at random; None when the variant has none."""
        live = self.live(app)
        if len(live) <= 1:
            return live[0] if live else None
        first, second = self._rng.sample(live, 2)
        return first if first.in_flight <= second.in_flight else second

    async def call(self, replica: DirectReplica, requests: Sequence[InferenceRequest]) -> list[InferenceResult | Exception]:
        """The replica's answers; `ReplicaUnreachable` (and the replica passed over a while) if it gave none."""
        replica.in_flight += 1
        try:
            return await replica.client.infer_many(requests)
        except ReplicaUnreachable:
            replica.failed_at = self._clock()
            raise
        finally:
            replica.in_flight -= 1

    async def refresh(self, timeout_s: float = 0.0) -> bool:
        """Take the directory's table if it changed (waiting up to `timeout_s` for a change); False if unreachable."""
        try:
            epoch, endpoints = await self._listen(self._epoch, timeout_s)
        except DirectoryUnavailable as exc:
            if not self._failing:  # once until it works again; the addresses known keep serving
                logger.warning("could not read the replica directory: %s", exc)
            self._failing = True
            return False
        if self._failing:
            logger.warning("reading the replica directory again")
        self._failing = False
        if epoch != self._epoch:
            self._epoch = epoch
            self._use(endpoints)
            self._on_change()
        return True

    async def follow(self) -> None:
        """Follow the directory forever (a named task the router cancels on stop)."""
        while True:
            if not await self.refresh(self._poll_s):
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        """Close every connection (once the router has stopped taking requests)."""
        for replicas in self._by_app.values():
            self._retire(replicas)
        self._by_app = {}
        await asyncio.gather(*self._closing, return_exceptions=True)

    def _use(self, endpoints: list[Endpoint]) -> None:
        known = {r.endpoint: r for replicas in self._by_app.values() for r in replicas}
        by_app: dict[str, list[DirectReplica]] = {}
        for endpoint in endpoints:
            by_app.setdefault(endpoint.app, []).append(known.pop(endpoint, None) or DirectReplica(endpoint))
        self._by_app = by_app
        self._retire(known.values())

    def _retire(self, replicas: Iterable[DirectReplica]) -> None:
        # Calls in flight finish on the old connection: a replica that left the directory is draining.
        for replica in replicas:
            task = asyncio.create_task(replica.client.close(grace_s=30.0), name="quiver-close-replica-connection")
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
