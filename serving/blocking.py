"""Blocking calls into Ray, awaited from an event loop without stalling it or holding up an exit.

While Ray's head is away, a call that needs the GCS (a named actor's lookup, Serve's status)
waits for it, for minutes. On the event loop it would stall every request the process serves;
in the loop's default executor it would hold up `asyncio.run`'s return, which waits for those
threads. So each such call runs in a daemon thread of its own, and the awaiting side decides
how long to wait.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def in_daemon_thread(call: Callable[[], T], name: str) -> asyncio.Future[T]:
    """`call()` in a daemon thread; the future, on the running loop, gets its result or its exception."""
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: Exception | None) -> None:
        if outcome.done():
            return
        if error is None:
            outcome.set_result(result)  # type: ignore[arg-type]
        else:
            outcome.set_exception(error)

    def run() -> None:
        result, error = None, None
        try:
            result = call()
        except Exception as exc:  # noqa: BLE001 - handed to the awaiting side
            error = exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop has closed: nobody waits any more
            pass

    threading.Thread(target=run, name=name, daemon=True).start()
    return outcome
