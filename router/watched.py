"""A file the router re-reads when it changes (traffic weights, tokens), and keeps if it breaks.

Polled for a change of modification time or size; a new version that does not parse is logged
and refused, and the last good value stays in force. The value is swapped in one assignment,
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
    def __init__(self, path: Path | None, parse: Callable[[bytes], T], initial: T, what: str) -> None:
        self._path = path
        self._parse = parse
        self._what = what
        self.value: T = initial
        self._stamp: tuple[int, int] | None = None

    def reload(self) -> bool:
        """Read the file if it changed; returns whether a new value took effect."""
        if self._path is None:
            return False
        try:
            stat = self._path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp == self._stamp:
                return False
            self._stamp = stamp
            value = self._parse(self._path.read_bytes())
        except Exception as exc:  # noqa: BLE001 - whatever the file holds, the last good value stays
            # The message names the file and the problem, never the content (it may hold secrets).
            logger.error("%s %s refused, keeping the current one: %s", self._what, self._path, _describe(exc))
            return False
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
