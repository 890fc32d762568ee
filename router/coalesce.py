"""Coalescing: concurrent requests for one variant travel to its replicas as one call.

A call to a replica costs about the same whatever it carries: here ~3.6 ms of CPU on the
router and the replica (Serve's handle path, Ray's task submission, the replica's request
wrapper) against 0.006 ms of ONNX Runtime for the example model. So a variant keeps at most
`capacity()` calls in flight; requests that arrive while they are all out wait in its queue,
and the next call takes every request waiting, up to one batch of rows. With a call free, a
request leaves at once, with whatever arrived in the same turn of the event loop; under load,
calls grow to what arrives during one round trip. Nothing waits on a timer for a batch to fill.

Each request keeps its own outcome (its result, or its own error: one bad input fails alone)
and its own wait limit: a request whose limit passes while queued leaves the queue unsent; one
whose call is out stops waiting (the replica skips it if its batch has not started, by its
deadline), and a call nobody waits for any more is cancelled. A request can also be withdrawn
(`Pending.cancel`: router/health.py does it when its variant stops answering), so that it is
retried elsewhere at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Generator
from functools import partial
from typing import Any

from quiver.serving import InferenceRequest, InferenceResult

# A call: the requests, in order → one outcome per request (a result, or its own error).
Send = Callable[[list[InferenceRequest]], Awaitable[list[InferenceResult | Exception]]]


class Expired(Exception):
    """A request's wait ran out; `sent` says whether its call had left (its work may have run)."""

    def __init__(self, sent: bool) -> None:
        super().__init__("sent, no answer in time" if sent else "not sent in time")
        self.sent = sent


class Withdrawn(Exception):
    """The request was taken back before its answer came (`Pending.cancel`); it may be tried elsewhere."""


class _Call:
    __slots__ = ("task", "waiting")

    def __init__(self, waiting: int) -> None:
        self.task: asyncio.Task | None = None
        self.waiting = waiting  # requests of this call still waiting for it


class Pending:
    """One submitted request: await it for its outcome; `cancel` withdraws it."""

    __slots__ = ("request", "future", "call", "gave_up", "timer", "_coalescer")

    def __init__(self, request: InferenceRequest, future: asyncio.Future, coalescer: Coalescer) -> None:
        self.request = request
        self.future = future
        self.call: _Call | None = None
        self.gave_up = False
        self.timer: asyncio.TimerHandle | None = None
        self._coalescer = coalescer

    def __await__(self) -> Generator[Any, None, InferenceResult]:
        return self._outcome().__await__()

    def cancel(self) -> None:
        """Withdraw the request: its waiter gets `Withdrawn` now, and it is not sent if it was still queued."""
        if not self.future.done():
            self.future.set_exception(Withdrawn("withdrawn: its variant stopped answering"))
            self._coalescer._give_up(self)

    async def _outcome(self) -> InferenceResult:
        try:
            return await self.future
        except asyncio.CancelledError:  # the client went away
            self._coalescer._give_up(self)
            raise
        finally:
            if self.timer is not None:
                self.timer.cancel()


class Coalescer:
    """One variant's queue of requests and its calls in flight."""

    def __init__(self, send: Send, capacity: Callable[[], int], max_rows: int, name: str = "variant") -> None:
        self._send = send
        self._capacity = capacity
        self._max_rows = max_rows
        self._name = name
        self._queue: deque[Pending] = deque()
        self._calls: set[_Call] = set()
        self._flush_soon = False

    @property
    def calls_in_flight(self) -> int:
        return len(self._calls)

    def submit(self, request: InferenceRequest, wait_s: float) -> Pending:
        """Queue the request; awaiting the answer gives its result, or its own error, or
        `Expired` if none came within `wait_s`."""
        loop = asyncio.get_running_loop()
        pending = Pending(request, loop.create_future(), self)
        self._queue.append(pending)
        if not self._flush_soon:  # after the requests already runnable in this turn have queued too
            self._flush_soon = True
            loop.call_soon(self._flush)
        pending.timer = loop.call_later(wait_s, self._expire, pending)
        return pending

    def _flush(self) -> None:
        self._flush_soon = False
        while self._queue and len(self._calls) < max(1, self._capacity()):
            batch = self._take()
            if not batch:
                return
            call = _Call(len(batch))
            for waiting in batch:
                waiting.call = call
            self._calls.add(call)
            call.task = asyncio.create_task(self._run(call, batch), name=f"quiver-call-{self._name}")
            call.task.add_done_callback(partial(self._finished, call))

    def _take(self) -> list[Pending]:
        """Waiting requests from the front, up to one batch of rows (at least one request)."""
        batch: list[Pending] = []
        rows = 0
        while self._queue:
            first = self._queue[0]
            if first.future.done():  # expired or cancelled while queued: never sent
                self._queue.popleft()
                continue
            if batch and rows + first.request.rows > self._max_rows:
                break
            batch.append(self._queue.popleft())
            rows += first.request.rows
        return batch

    async def _run(self, call: _Call, batch: list[Pending]) -> None:
        try:
            outcomes: list[InferenceResult | Exception] = await self._send([waiting.request for waiting in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(f"{len(batch)} requests sent, {len(outcomes)} answers came back")
        except asyncio.CancelledError:
            outcomes = [Expired(sent=True)] * len(batch)  # nobody waits for them any more
        except Exception as exc:  # noqa: BLE001 - the call failed: every request it carried fails with it
            outcomes = [exc] * len(batch)
        for waiting, outcome in zip(batch, outcomes):
            if waiting.future.done():
                continue
            if isinstance(outcome, BaseException):
                waiting.future.set_exception(outcome)
            else:
                waiting.future.set_result(outcome)

    def _finished(self, call: _Call, task: asyncio.Task) -> None:
        # Here, not in `_run`: a call cancelled before it ran (every request gave up in the same
        # turn, as clients with millisecond deadlines do) never enters `_run`, and must not keep
        # its slot, or the variant stops sending anything.
        self._calls.discard(call)
        self._flush()

    def _expire(self, waiting: Pending) -> None:
        if not waiting.future.done():
            waiting.future.set_exception(Expired(sent=waiting.call is not None))
            self._give_up(waiting)

    def _give_up(self, waiting: Pending) -> None:
        """This request waits no more; a call left with nobody waiting is cancelled."""
        if waiting.gave_up or waiting.call is None:
            return
        waiting.gave_up = True
        waiting.call.waiting -= 1
        if waiting.call.waiting == 0 and waiting.call.task is not None:
            waiting.call.task.cancel()
