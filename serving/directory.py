"""The replica directory: where each variant's replicas take direct calls (serving/dataplane.py).

One small Ray actor per cluster, named `quiver-replica-directory` in the namespace `quiver`,
created by whoever needs it first and restarted by Ray if its node goes. Replicas register
their address and secret when they start, again every `HEARTBEAT_S` (an entry not renewed
within `TTL_S` is dropped, so a replica killed outright disappears within that), and
unregister when Serve stops them. Routers long-poll it: `listen` answers at once when the
table changed since the epoch they know, else when it changes or after `timeout_s`. A restarted
directory (its node or the Ray head went) starts empty at a new epoch and fills again as replicas
renew; a router that knew the earlier one keeps its table until the replicas still alive have
had `TTL_S` to register again, as long as a silent entry would have been kept.

Serve stays in charge of which replicas exist and where; this only says how to reach them.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass

import ray
from ray import exceptions as ray_errors

from .blocking import in_daemon_thread

logger = logging.getLogger(__name__)

NAME, NAMESPACE = "quiver-replica-directory", "quiver"
HEARTBEAT_S = 2.0
TTL_S = 3 * HEARTBEAT_S


@dataclass(frozen=True)
class Endpoint:
    """One replica's data plane."""

    app: str  # its variant's Serve application
    replica: str  # unique to this start of the replica
    address: str  # host:port
    token: str  # the secret a caller must present


class DirectoryUnavailable(Exception):
    """The directory could not be reached (it may be restarting); the caller keeps what it knew."""


class DirectoryTable:
    """The directory's state and long poll; `ReplicaDirectory` is this as a Ray actor."""

    def __init__(self, ttl_s: float = TTL_S) -> None:
        self._ttl_s = ttl_s
        self._entries: dict[tuple[str, str], tuple[Endpoint, float]] = {}
        # A fresh directory never repeats an old one's epoch, so routers notice the restart.
        self._epoch = self._first_epoch = secrets.randbits(62)
        self._filled_at = time.monotonic() + ttl_s  # by then every live replica has registered here
        self._changed = asyncio.Event()

    async def register(self, endpoint: Endpoint) -> None:
        key = (endpoint.app, endpoint.replica)
        known = self._entries.get(key)
        self._entries[key] = (endpoint, time.monotonic() + self._ttl_s)
        if known is None or known[0] != endpoint:
            self._bump()

    async def unregister(self, app: str, replica: str) -> None:
        if self._entries.pop((app, replica), None) is not None:
            self._bump()

    async def listen(self, epoch: int | None, timeout_s: float) -> tuple[int, list[Endpoint]]:
        """The table once it differs from `epoch` (None: now), or as it is after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        if epoch is not None and not self._first_epoch <= epoch <= self._epoch:
            # The caller knew an earlier directory: a table still filling would take it away from
            # replicas that serve. Wait until it is filled (or the caller's timeout).
            await asyncio.sleep(max(0.0, min(self._filled_at, deadline) - time.monotonic()))
        self._expire()
        while epoch == self._epoch and (left := deadline - time.monotonic()) > 0:
            next_expiry = min((expires for _, expires in self._entries.values()), default=deadline)
            try:
                await asyncio.wait_for(self._changed.wait(), max(0.0, min(left, next_expiry - time.monotonic())))
            except asyncio.TimeoutError:
                self._expire()
        return self._epoch, [endpoint for endpoint, _ in self._entries.values()]

    def _expire(self) -> None:
        now = time.monotonic()
        stale = [key for key, (_, expires) in self._entries.items() if expires <= now]
        for key in stale:
            del self._entries[key]
        if stale:
            self._bump()

    def _bump(self) -> None:
        self._epoch += 1
        # Wake every listener once, then arm the event again for the next change.
        self._changed.set()
        self._changed = asyncio.Event()


ReplicaDirectory = ray.remote(num_cpus=0, max_restarts=-1)(DirectoryTable)
_handle: ray.actor.ActorHandle | None = None


def _directory() -> ray.actor.ActorHandle:
    """The cluster's directory, created if there is none yet (by a replica or a router, whoever
    comes first); the handle is kept until a call through it fails."""
    global _handle
    if _handle is None:
        _handle = ReplicaDirectory.options(name=NAME, namespace=NAMESPACE, get_if_exists=True, lifetime="detached").remote()
    return _handle


async def _call(method: str, *args: object) -> object:
    global _handle
    try:
        # Finding the actor asks the GCS, which may be away: never on the event loop.
        handle = _handle or await in_daemon_thread(_directory, "quiver-directory-lookup")
        return await getattr(handle, method).remote(*args)
    except ray_errors.ActorUnavailableError as exc:  # restarting, or its node or the GCS away: the handle stays good
        raise DirectoryUnavailable(f"{type(exc).__name__}: {exc}") from exc
    except (ray_errors.RayError, ValueError) as exc:  # ValueError: its name was taken by a restart meanwhile
        _handle = None
        raise DirectoryUnavailable(f"{type(exc).__name__}: {exc}") from exc


async def listen_directory(epoch: int | None, timeout_s: float = 30.0) -> tuple[int, list[Endpoint]]:
    """A router's long poll (see `ReplicaDirectory.listen`); `DirectoryUnavailable` if it cannot be reached."""
    return await _call("listen", epoch, timeout_s)


class Registration:
    """A replica's entry in the directory, renewed while the replica serves."""

    def __init__(self, endpoint: Endpoint, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.endpoint = endpoint
        self._heartbeat_s = heartbeat_s
        self._task: asyncio.Task | None = None
        self._failing = False

    async def start(self) -> None:
        await self._register()
        self._task = asyncio.create_task(self._renew(), name=f"quiver-directory-{self.endpoint.app}")

    async def stop(self) -> None:
        """Leave the directory first, so routers stop sending before the data plane closes."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await _call("unregister", self.endpoint.app, self.endpoint.replica)
        except DirectoryUnavailable as exc:
            logger.warning("could not leave the replica directory (the entry expires in %.0f s): %s", TTL_S, exc)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            await self._register()

    async def _register(self) -> None:
        try:
            await _call("register", self.endpoint)
        except DirectoryUnavailable as exc:
            if not self._failing:  # once until it works again
                logger.warning("could not register in the replica directory (routers use Serve's handle meanwhile): %s", exc)
            self._failing = True
        else:
            if self._failing:
                logger.warning("registered in the replica directory again")
            self._failing = False
