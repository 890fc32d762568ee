"""Coalescing in the router (router/coalesce.py) against a scripted replica: what travels in
one call, and that every request keeps its own result, error and deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import pytest

from quiver.router.coalesce import Coalescer, Expired, Withdrawn
from quiver.serving import InferenceError, InferenceRequest, InferenceResult
from quiver.serving.autoscaling import REQUESTS_METRIC, requests_policy


def request(rows: int = 1, tag: float = 0.0) -> InferenceRequest:
    return InferenceRequest({"x": np.full((rows, 1), tag, np.float32)})


class Replica:
    """Answers each call after `release` is set, echoing each request's tag; tags below 0 are refused."""

    def __init__(self) -> None:
        self.calls: list[list[InferenceRequest]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.fail_with: Exception | None = None
        self.cancelled = 0

    async def send(self, requests: list[InferenceRequest]) -> list[InferenceResult | Exception]:
        self.calls.append(requests)
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.fail_with is not None:
            raise self.fail_with
        rows = sum(r.rows for r in requests)
        return [
            InferenceError(f"tag {r.inputs['x'][0, 0]} refused") if r.inputs["x"][0, 0] < 0
            else InferenceResult({"y": r.inputs["x"] * 2}, len(requests), rows)
            for r in requests
        ]


def one_call_at_a_time(held: bool = False) -> tuple[Replica, Coalescer]:
    """A scripted replica behind a coalescer allowing one call out; `held`: calls wait for `release`."""
    replica = Replica()
    if held:
        replica.release.clear()
    return replica, Coalescer(replica.send, capacity=lambda: 1, max_rows=64)


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 30))


async def until(condition: Callable[[], bool]) -> None:
    """Turns of the event loop until `condition` holds (`run`'s bound fails a scenario where it never does)."""
    while not condition():
        await asyncio.sleep(0)


async def turns(n: int = 10) -> None:
    """Turns of the event loop, not time: each step the coalescer or a task takes on its own (a flush,
    a call starting, a waiter starting to wait) is one turn, so after these whatever would happen has."""
    for _ in range(n):
        await asyncio.sleep(0)


def test_requests_that_arrive_while_calls_are_out_travel_together() -> None:
    async def scenario() -> None:
        replica, coalescer = one_call_at_a_time(held=True)
        first = asyncio.ensure_future(coalescer.submit(request(tag=1), 5))
        await until(lambda: len(replica.calls) == 1)  # the first call leaves alone
        rest = [asyncio.ensure_future(coalescer.submit(request(tag=t), 5)) for t in (2, 3, 4)]
        await turns()
        assert [len(call) for call in replica.calls] == [1]  # the others wait: the only call is out
        replica.release.set()
        results = await asyncio.gather(first, *rest)
        assert [len(call) for call in replica.calls] == [1, 3]
        assert [float(r.outputs["y"][0, 0]) for r in results] == [2, 4, 6, 8]
        assert [r.batch_requests for r in results] == [1, 3, 3, 3]

    run(scenario())


def test_requests_of_one_turn_leave_in_one_call_without_waiting() -> None:
    async def scenario() -> None:
        replica = Replica()
        coalescer = Coalescer(replica.send, capacity=lambda: 4, max_rows=64)
        results = await asyncio.gather(*(coalescer.submit(request(tag=t), 5) for t in range(5)))
        assert [len(call) for call in replica.calls] == [5]
        assert [float(r.outputs["y"][0, 0]) for r in results] == [0, 2, 4, 6, 8]

    run(scenario())


def test_a_call_never_carries_more_rows_than_one_batch() -> None:
    async def scenario() -> None:
        replica = Replica()
        coalescer = Coalescer(replica.send, capacity=lambda: 1, max_rows=8)
        sizes = [3, 3, 3, 20, 1, 8]
        await asyncio.gather(*(coalescer.submit(request(rows), 5) for rows in sizes))
        assert [[r.rows for r in call] for call in replica.calls] == [[3, 3], [3], [20], [1], [8]]

    run(scenario())


def test_a_refused_request_fails_alone_and_a_failed_call_fails_only_its_own() -> None:
    async def scenario() -> None:
        replica, coalescer = one_call_at_a_time()
        outcomes = await asyncio.gather(*(coalescer.submit(request(tag=t), 5) for t in (1, -1, 2)), return_exceptions=True)
        assert isinstance(outcomes[1], InferenceError) and "refused" in str(outcomes[1])
        assert [float(outcomes[i].outputs["y"][0, 0]) for i in (0, 2)] == [2, 4]

        replica.fail_with = ConnectionError("replica gone")
        failed = await asyncio.gather(*(coalescer.submit(request(), 5) for _ in range(3)), return_exceptions=True)
        assert all(isinstance(outcome, ConnectionError) for outcome in failed)
        replica.fail_with = None
        assert (await coalescer.submit(request(tag=3), 5)).outputs["y"][0, 0] == 6  # the variant serves on

    run(scenario())


def test_a_request_whose_wait_runs_out_while_queued_is_never_sent() -> None:
    async def scenario() -> None:
        replica, coalescer = one_call_at_a_time(held=True)
        out = asyncio.ensure_future(coalescer.submit(request(tag=1), 5))
        await until(lambda: len(replica.calls) == 1)
        with pytest.raises(Expired) as expired:
            await coalescer.submit(request(tag=2), 0.02)
        assert expired.value.sent is False
        replica.release.set()
        await out
        assert [len(call) for call in replica.calls] == [1]  # the expired one never left

    run(scenario())


def test_a_call_nobody_waits_for_is_cancelled_and_frees_its_place() -> None:
    async def scenario() -> None:
        replica, coalescer = one_call_at_a_time(held=True)
        with pytest.raises(Expired) as expired:
            await coalescer.submit(request(), 0.02)
        assert expired.value.sent is True
        await until(lambda: replica.cancelled == 1 and coalescer.calls_in_flight == 0)
        replica.release.set()
        assert (await coalescer.submit(request(tag=5), 5)).outputs["y"][0, 0] == 10

    run(scenario())


def test_a_client_that_goes_away_leaves_the_queue() -> None:
    async def scenario() -> None:
        replica, coalescer = one_call_at_a_time(held=True)
        out = asyncio.ensure_future(coalescer.submit(request(tag=1), 5))
        await until(lambda: len(replica.calls) == 1)
        gone = asyncio.ensure_future(coalescer.submit(request(tag=2), 5))
        kept = asyncio.ensure_future(coalescer.submit(request(tag=3), 5))
        await turns()  # both wait in the queue
        gone.cancel()
        replica.release.set()
        await asyncio.gather(out, kept)
        assert [[float(r.inputs["x"][0, 0]) for r in call] for call in replica.calls] == [[1.0], [3.0]]

    run(scenario())


def test_a_withdrawn_request_fails_at_once_and_is_not_sent() -> None:
    async def scenario() -> None:
        replica, coalescer = one_call_at_a_time(held=True)
        out = coalescer.submit(request(tag=1), 5)
        await until(lambda: len(replica.calls) == 1)
        queued = coalescer.submit(request(tag=2), 5)
        out.cancel()  # its variant stopped answering: both are withdrawn
        queued.cancel()
        for pending in (out, queued):
            with pytest.raises(Withdrawn):
                await pending
        await until(lambda: replica.cancelled == 1)
        await turns()
        assert [len(call) for call in replica.calls] == [1]  # the queued one never left
        replica.release.set()
        assert (await coalescer.submit(request(tag=3), 5)).outputs["y"][0, 0] == 6

    run(scenario())


def test_autoscaling_counts_the_requests_replicas_hold_not_calls() -> None:
    config = SimpleNamespace(get_target_ongoing_requests=lambda: 8)
    context = SimpleNamespace(current_num_replicas=2, target_num_replicas=2, total_num_requests=2, config=config,
                              aggregated_metrics={REQUESTS_METRIC: {"a": 24.0, "b": 16.0}})
    assert requests_policy(context)[0] == 5  # 40 requests held, 8 per replica (2 calls: 0.25)
    context.aggregated_metrics = {}  # no replica reported yet: Serve's own count
    assert requests_policy(context)[0] == 0.25


def test_a_call_whose_requests_all_give_up_before_it_runs_frees_its_slot() -> None:
    """Requests with millisecond deadlines expire in the very turn their call is made (under load
    the loop runs their timers right after the flush): the call is cancelled before it ever ran,
    and the variant must still send the next request (it once stopped sending anything)."""

    async def scenario() -> None:
        replica, coalescer = one_call_at_a_time()
        for _ in range(3):
            doomed = [coalescer.submit(request(tag=1), 0) for _ in range(4)]
            outcomes = await asyncio.gather(*(asyncio.ensure_future(p) for p in doomed), return_exceptions=True)
            assert all(isinstance(o, Expired) for o in outcomes), outcomes
        assert replica.calls == []  # no call ran: each was cancelled before its first step
        result = await coalescer.submit(request(tag=7), 5)
        assert result.outputs["y"][0, 0] == 14

    run(scenario())
