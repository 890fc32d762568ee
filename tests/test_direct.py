"""The direct data plane: replicas' gRPC servers, the replica directory, the router's choice of
replica; and end to end on a real Ray cluster, that it follows replicas as Serve adds, stops,
loses and moves them, without a failed request where another replica could answer."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import ray
import tritonclient.grpc as triton
from ray.cluster_utils import Cluster

from quiver.router.endpoints import Endpoints
from quiver.serving import (
    Autoscaling,
    DeadlinePassed,
    DirectoryUnavailable,
    Endpoint,
    InferenceError,
    InferenceRequest,
    InferenceResult,
    ReplicaUnreachable,
    Replicas,
    app_name,
    build_example,
    from_onnx_file,
    node_resources,
    read_version,
    write_version,
)
from quiver.serving.dataplane import DataPlaneClient, DataPlaneServer
from quiver.serving.directory import NAME, NAMESPACE, DirectoryTable

from .serverproc import quiver_serve


def test_the_directory_answers_listeners_on_change_and_forgets_silent_replicas() -> None:
    async def scenario() -> None:
        table = DirectoryTable(ttl_s=0.3)
        epoch, listed = await table.listen(None, 5)
        assert listed == []
        waiting = asyncio.create_task(table.listen(epoch, 60))
        await asyncio.sleep(0.01)
        assert not waiting.done()  # nothing changed: the poll waits
        one = Endpoint("m.1.a", "r1", "10.0.0.1:5000", "secret")
        await table.register(one)
        # Within 30 s of a 60 s poll: the change woke it, not its timeout.
        epoch, listed = await asyncio.wait_for(waiting, 30)
        assert listed == [one]
        await table.register(one)  # a heartbeat changes nothing a listener needs to hear
        assert (await table.listen(epoch, 0))[0] == epoch
        expired, listed = await table.listen(epoch, 30)  # no heartbeat: the entry expires
        assert expired != epoch and listed == []  # a change (the expiry), not the poll's timeout
        epoch = expired
        await table.register(one)
        epoch, _ = await table.listen(epoch, 0)
        await table.unregister("m.1.a", "r1")
        assert (await table.listen(epoch, 0))[1] == []

    asyncio.run(scenario())


def test_a_restarted_directory_answers_routers_that_knew_the_earlier_one_once_replicas_registered_again() -> None:
    async def scenario() -> None:
        earlier = DirectoryTable(ttl_s=0.3)
        one, two = (Endpoint("m.1.a", name, f"10.0.0.1:500{i}", "secret") for i, name in enumerate(("r1", "r2")))
        await earlier.register(one)
        await earlier.register(two)
        known, _ = await earlier.listen(None, 0)

        began = time.monotonic()
        restarted = DirectoryTable(ttl_s=1.0)
        assert (await restarted.listen(None, 0))[1] == []  # a router starting now takes it as it is
        answer = asyncio.create_task(restarted.listen(known, 60))
        while not answer.done():  # r1 renews, as its heartbeat does (20 a TTL); r2 died with the earlier directory's node
            await restarted.register(one)
            await asyncio.sleep(0.05)
        epoch, listed = await answer
        # The behaviour is a time: a router that knew the earlier directory is answered once the
        # TTL has passed. A lower bound, which load can only lengthen.
        assert listed == [one] and time.monotonic() - began >= 0.99
        # A router that knows this directory's epoch is not held for the fill (60 s here).
        fresh = DirectoryTable(ttl_s=60)
        own, _ = await fresh.listen(None, 0)
        await fresh.register(one)
        assert (await asyncio.wait_for(fresh.listen(own, 60), 30))[1] == [one]

    asyncio.run(scenario())


async def _echo(requests: list[InferenceRequest]) -> list[InferenceResult | Exception]:
    """A replica that doubles `x`, refuses negative values and skips expired requests."""
    answers: list[InferenceResult | Exception] = []
    for request in requests:
        x = request.inputs["x"]
        if request.deadline is not None and request.deadline < time.time():
            answers.append(DeadlinePassed("expired"))
        elif (x < 0).any():
            answers.append(InferenceError("negative values"))
        else:
            answers.append(
                InferenceResult({"y": x * 2, "i": np.arange(len(x), dtype=np.int64)}, len(requests), len(x), queue_s=0.25, compute_s=0.5)
            )
    return answers


def test_a_data_plane_answers_each_request_and_only_callers_with_its_secret() -> None:
    async def scenario() -> None:
        server = DataPlaneServer(_echo)
        address = await server.start("127.0.0.1")
        client = DataPlaneClient(Endpoint("m.1.a", "r1", address, server.token))
        stranger = DataPlaneClient(Endpoint("m.1.a", "r1", address, "guessed"))
        try:
            x = np.arange(6, dtype=np.float32).reshape(2, 3)
            ok, refused, expired = await client.infer_many([
                InferenceRequest({"x": x}),
                InferenceRequest({"x": -x}),
                InferenceRequest({"x": x}, deadline=time.time() - 1),
            ])
            np.testing.assert_array_equal(ok.outputs["y"], x * 2)
            assert ok.outputs["i"].dtype == np.int64 and (ok.batch_requests, ok.batch_rows) == (3, 2)
            assert (ok.queue_s, ok.compute_s) == (0.25, 0.5)
            assert isinstance(refused, InferenceError) and str(refused) == "negative values"
            assert isinstance(expired, DeadlinePassed)
            with pytest.raises(ReplicaUnreachable, match="unknown caller"):
                await stranger.infer_many([InferenceRequest({"x": x})])
            await server.stop(0)
            with pytest.raises(ReplicaUnreachable, match="replica at"):
                await client.infer_many([InferenceRequest({"x": x})])
        finally:
            await client.close()
            await stranger.close()

    asyncio.run(scenario())


def test_a_stopping_data_plane_finishes_calls_in_flight_refuses_new_ones_and_never_leaves_one_hanging() -> None:
    async def scenario() -> None:
        release, entered = asyncio.Event(), asyncio.Event()

        async def held(requests: list[InferenceRequest]) -> list[InferenceResult | Exception]:
            entered.set()
            await release.wait()
            return await _echo(requests)

        x = np.ones((1, 3), dtype=np.float32)
        for grace_s, answered in ((60.0, True), (0.2, False)):
            server = DataPlaneServer(held)
            client = DataPlaneClient(Endpoint("m.1.a", "r1", await server.start("127.0.0.1"), server.token))
            try:
                in_flight = asyncio.create_task(client.infer_many([InferenceRequest({"x": x})]))
                await asyncio.wait_for(entered.wait(), 30)  # the replica runs it
                stopping = asyncio.create_task(server.stop(grace_s))
                await asyncio.sleep(0)  # its first step: new calls are refused from here on
                if answered:  # within its grace period (60 s: far longer than a refusal takes)
                    with pytest.raises(ReplicaUnreachable, match="stopping"):
                        await client.infer_many([InferenceRequest({"x": x})])
                    # the call in flight is answered
                    release.set()
                    np.testing.assert_array_equal((await in_flight)[0].outputs["y"], x * 2)
                else:  # past it: the replica closes the connection, and the caller hears so at once
                    with pytest.raises(ReplicaUnreachable, match="closed"):
                        await asyncio.wait_for(in_flight, 30)
                await stopping
                with pytest.raises(ReplicaUnreachable):  # the connection's end, if not heard of yet
                    await client.infer_many([InferenceRequest({"x": x})])
                with pytest.raises(ReplicaUnreachable, match="cannot connect"):
                    await client.infer_many([InferenceRequest({"x": x})])
            finally:
                release.clear()
                entered.clear()
                await client.close()

    asyncio.run(scenario())


def test_the_router_picks_the_less_busy_replica_and_passes_over_one_that_failed() -> None:
    a, b, c = (Endpoint("m.1.a", name, f"127.0.0.1:{port}", "t") for name, port in (("a", 1), ("b", 2), ("c", 3)))
    tables = [(1, [a, b]), DirectoryUnavailable("restarting"), (2, [b, c])]
    now = [0.0]

    async def listen(epoch: int | None, timeout_s: float) -> tuple[int, list[Endpoint]]:
        answer = tables.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def scenario() -> None:
        endpoints = Endpoints(listen, cooldown_s=5, clock=lambda: now[0])
        assert await endpoints.refresh()
        first, second = endpoints.live("m.1.a")
        first.in_flight = 3
        assert {endpoints.pick("m.1.a").endpoint for _ in range(20)} == {second.endpoint}
        second.failed_at = 0.0  # its last call found nobody
        now[0] = 1.0
        assert endpoints.pick("m.1.a") is first and endpoints.live("m.1.a") == [first]
        now[0] = 6.0
        assert len(endpoints.live("m.1.a")) == 2  # cooled down: tried again
        assert endpoints.directory_up
        assert not await endpoints.refresh()  # the directory is away: what was known stays
        assert not endpoints.directory_up  # quiver_replica_directory_up 0
        assert len(endpoints.live("m.1.a")) == 2
        kept = next(r for r in endpoints.live("m.1.a") if r.endpoint == b)
        assert await endpoints.refresh()
        assert endpoints.directory_up
        assert [r.endpoint for r in endpoints.live("m.1.a")] == [b, c]
        assert next(r for r in endpoints.live("m.1.a") if r.endpoint == b) is kept  # same channel
        assert endpoints.pick("other.1.a") is None
        await endpoints.close()

    asyncio.run(scenario())


def _store(root: Path) -> Path:
    """`direct`: the example model, autoscaled between 1 and 2 replicas on the requests they hold."""
    source = from_onnx_file(build_example(root / "direct/1/model.onnx")).manifest
    # A replica holds a request only while it computes (~a third of its time here): four clients
    # keep ~1 held, one keeps ~0.3; a target of 0.5 per replica makes that two replicas, then one.
    scaling = Autoscaling(min_replicas=1, max_replicas=2, target_ongoing_requests=0.5, upscale_delay_s=0, downscale_delay_s=1)
    variant = source.variants[0].model_copy(update={"replicas": Replicas(num_cpus=0.25, autoscaling=scaling)})
    write_version(root, source.model_copy(update={"name": "direct", "variants": [variant]}))
    return root


def _direct_calls(metrics_url: str) -> float:
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    found = re.search(r'quiver_replica_calls_total\{[^}]*model="direct"[^}]*path="direct"[^}]*\} (\S+)', text)
    return float(found.group(1)) if found else 0.0


def _replicas(app: str) -> dict[int, int]:
    """The variant's replica processes on this machine, each with its parent (its node's raylet).

    Ray retitles a replica's process while it runs a call through Serve (the router's probes), so
    ps is read a few times; a process seen once and still alive counts.
    """
    seen: dict[int, int] = {}
    for _ in range(5):
        rows = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True, check=True).stdout
        seen |= {int(pid): int(ppid) for pid, ppid, *args in (row.split() for row in rows.splitlines())
                 if f"ServeReplica:{app}:" in " ".join(args)}
        time.sleep(0.05)
    return {pid: ppid for pid, ppid in seen.items() if _alive(pid)}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _raylet(node) -> int:
    return node.all_processes["raylet"][0].process.pid


def _listed(app: str) -> list[Endpoint]:
    try:
        directory = ray.get_actor(NAME, namespace=NAMESPACE)
        listed = ray.get(directory.listen.remote(None, 0))[1]
    except (ValueError, ray.exceptions.RayActorError):  # restarting: its node was the one removed
        return []
    return [e for e in listed if e.app == app]


def _eventually(condition, what: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.timeout(600)
def test_the_direct_path_follows_replicas_serve_adds_stops_loses_and_moves(tmp_path: Path) -> None:
    store = _store(tmp_path / "store")
    version = read_version(store / "direct/1")
    app = app_name(version, version.manifest.variants[0])
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": node_resources(["cpu"])})
    cluster.add_node(num_cpus=1, resources=node_resources(["cpu"]))
    cluster.wait_for_nodes()
    try:
        # A call that finds no replica (the last one gone) fails over within 2 s, not at the client's deadline.
        with quiver_serve(str(store), "--address", cluster.address, "--dispatch-timeout-s", "2") as server:
            ray.init(address=cluster.address, logging_level="ERROR")
            outcomes: list[tuple[float, str]] = []
            stops = [threading.Event() for _ in range(4)]

            def load(stop: threading.Event) -> None:
                client = triton.InferenceServerClient(server.address)
                tensor = triton.InferInput("input", [1, 64], "FP32")
                tensor.set_data_from_numpy(np.ones((1, 64), np.float32))
                for _ in range(100_000):  # bounded; stopped sooner
                    if stop.is_set():
                        return
                    try:
                        client.infer("direct", [tensor], client_timeout=30)
                        outcomes.append((time.monotonic(), "OK"))
                    except triton.InferenceServerException as exc:
                        outcomes.append((time.monotonic(), exc.status()))

            def failures(since: float = 0.0) -> Counter:
                return Counter(status for t, status in outcomes if t >= since and status != "OK")

            threads = [threading.Thread(target=load, args=(stop,), daemon=True) for stop in stops]
            for thread in threads:
                thread.start()
            try:
                _eventually(lambda: _direct_calls(server.metrics_url) > 20, "calls on the direct path")

                # Under four clients Serve's autoscaler adds a replica (on the requests replicas hold,
                # serving/autoscaling.py): the router learns its address and calls it too.
                _eventually(lambda: len(_listed(app)) == 2 and len(_replicas(app)) == 2, "a second replica", 120)
                began = time.monotonic()

                # One of the two is killed outright: the other takes its calls, nothing fails. Serve
                # replaces it, unless its autoscaler (on the requests held, which the kill just
                # lowered) settles for one: either way the directory comes to list what runs.
                victim = next(iter(_replicas(app)))
                os.kill(victim, signal.SIGKILL)
                _eventually(lambda: victim not in _replicas(app) and len(_listed(app)) == len(_replicas(app)) >= 1,
                            "the directory to list the replicas Serve runs after the kill")

                # One client is left: the autoscaler stops a replica, which leaves the directory first and drains.
                for stop in stops[1:]:
                    stop.set()
                _eventually(lambda: len(_listed(app)) == 1 and len(_replicas(app)) == 1, "one replica left", 120)
                left_at = time.monotonic()  # the one left answers on: 20 more calls, not a second's wait
                _eventually(lambda: sum(status == "OK" for t, status in outcomes if t > left_at) >= 20, "answers from the one left")
                if failures(began):
                    print(server.log()[-8000:])  # pytest shows it with the failure
                assert not failures(began), failures(began)

                # The last replica's node goes: Serve starts it on another node, at another address.
                ((survivor, raylet),) = _replicas(app).items()
                moved_from = _listed(app)[0].address
                node = next(n for n in [cluster.head_node, *cluster.worker_nodes] if _raylet(n) == raylet)
                if node is cluster.head_node:  # keep the head: take the replica's process instead
                    os.kill(survivor, signal.SIGKILL)
                else:
                    cluster.remove_node(node)
                _eventually(lambda: len(_listed(app)) == 1 and _listed(app)[0].address != moved_from, "the replica's new address")
                calls = _direct_calls(server.metrics_url)
                _eventually(lambda: _direct_calls(server.metrics_url) > calls + 20, "direct calls to the moved replica")
            finally:
                for stop in stops:
                    stop.set()
                for thread in threads:
                    thread.join(60)
            # Only the single replica's loss may fail a request, and only as UNAVAILABLE.
            assert set(failures()) <= {"StatusCode.UNAVAILABLE"}, failures()
            assert outcomes[-1][1] == "OK"
    finally:
        ray.shutdown()
        cluster.shutdown()
