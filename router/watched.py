"""A file the router re-reads when it changes (traffic weights, tokens), and keeps if it breaks.

Polled for a change of modification time or size; a new version that does not parse is logged
and refused, and the last good value stays in force (with `retry`, the refused version is
tried again at every poll: it may depend on something that is still on its way). The value is swapped in one assignment,
so a request sees the old value or the new one, whole.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class WatchedFile(Generic[T]):
    def __init__(self, path: Path | None, parse: Callable[[bytes], T], initial: T, what: str, retry: bool = False) -> None:
        self._path = path
        self._retry = retry
        self._refused: tuple[int, int] | None = None  # the version last refused
        self._parse = parse
        self._what = what
        self.value: T = initial
        self._stamp: tuple[int, int] | None = None

    def reload(self) -> bool:
        """Read the file if it changed; returns whether a new value took effect."""
        if self._path is None:
            return False
        stamp = None
        try:
            stat = self._path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp == self._stamp or (stamp == self._refused and not self._retry):
                return False
            value = self._parse(self._path.read_bytes())
        except Exception as exc:  # noqa: BLE001 - whatever the file holds, the last good value stays
            if stamp != self._refused:  # once per version of the file, however often it is retried
                # The message names the file and the problem, never the content (it may hold secrets).
                logger.error("%s %s refused, keeping the current one: %s", self._what, self._path, _describe(exc))
            self._refused = stamp
            return False
        self._stamp, self._refused = stamp, None
        self.value = value
        logger.warning("%s %s loaded", self._what, self._path)
        return True

    async def watch(self, interval_s: float = 0.25) -> None:
        """Re-read the file whenever it changes (a named task the router cancels on stop)."""
        while True:
            await asyncio.sleep(interval_s)
            self.reload()


def _describe(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
