"""A pool's only node crashes under load (its raylet and every process on it killed at once, as
when a machine or pod is lost; no drain): on a real three-node local Ray cluster.

- `pooled` has a variant on the cpu pool too: every request is answered OK (those waiting on
  the lost node are retried on the cpu variant once the router's probes find it gone).
- `gpuonly` has no other variant: its requests wait the replacement window (`--replacement-wait-s`,
  2 s here) for a replica that does not come, then fail fast with UNAVAILABLE and a reason naming
  the variant and pool (not after the 30 s dispatch timeout), ServerReady turns false and the
  inference service's health NOT_SERVING, while the server itself stays SERVING.
- A new node of the pool joins: Serve starts the replica there and the same router serves
  `gpuonly` again, SERVING and ready. No request is lost: each one gets an answer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ray.cluster_utils import Cluster

from quiver.serving import Manifest, Replicas, Variant, build_example, from_onnx_file, node_resources, write_version

from . import faults
from .serverproc import quiver_serve
from .test_pools import pooled_store

INFERENCE = "inference.GRPCInferenceService"
REPLACEMENT_WAIT_S = 2.0


def gpu_only_store(root: Path) -> Path:
    source = from_onnx_file(build_example(root / "gpuonly/1/model.onnx")).manifest
    plain = source.variants[0]
    write_version(root, Manifest(
        name="gpuonly", version="1", inputs=source.inputs, outputs=source.outputs,
        variants=[Variant(name="fp32", file=plain.file, sha256=plain.sha256, pool="gpu", replicas=Replicas(num_cpus=0.25))],
    ))
    return root


def crash(node) -> None:
    """Every process of a local Ray node, SIGKILLed at once: no drain, nothing told."""
    roots = {info.process.pid for infos in node.all_processes.values() for info in infos}
    children: dict[int, list[int]] = {}
    for row in subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True, check=True).stdout.splitlines():
        pid, ppid = map(int, row.split())
        children.setdefault(ppid, []).append(pid)
    doomed, todo = set(), list(roots)
    while todo:  # the node's processes and everything they started (its workers: the replicas)
        pid = todo.pop()
        if pid not in doomed:
            doomed.add(pid)
            todo.extend(children.get(pid, ()))
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass
class Outcome:
    sent_at: float
    seconds: float
    status: str  # "OK" or the gRPC status name
    message: str = ""
    variant: str = ""


@dataclass
class Load:
    """Two client threads per model, one request after another, each outcome kept."""

    address: str
    outcomes: dict[str, list[Outcome]] = field(default_factory=lambda: {"pooled": [], "gpuonly": []})
    sent: Counter = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, model: str) -> None:
        client = triton.InferenceServerClient(self.address)
        tensor = triton.InferInput("input", [1, 64], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 64), np.float32))
        for _ in range(20_000):  # bounded; the test stops it sooner
            if self.stop.is_set():
                return
            self.sent[model] += 1
            start = time.monotonic()
            try:
                response = client.infer(model, [tensor], client_timeout=45).get_response()
                outcome = Outcome(start, time.monotonic() - start, "OK", variant=response.parameters["quiver.variant"].string_param)
            except triton.InferenceServerException as exc:
                outcome = Outcome(start, time.monotonic() - start, (exc.status() or "error").removeprefix("StatusCode."), exc.message() or "")
                time.sleep(0.02)  # as a client backing off would; keeps the count readable
            self.outcomes[model].append(outcome)

    def since(self, model: str, t: float) -> list[Outcome]:
        return [o for o in self.outcomes[model] if o.sent_at >= t]

    def summary(self) -> dict:
        return {model: dict(Counter(o.status for o in outcomes)) for model, outcomes in self.outcomes.items()}


def health(channel: grpc.Channel, service: str) -> str:
    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
    return health_pb2.HealthCheckResponse.ServingStatus.Name(status)


def wait_for(condition, timeout_s: float, what: str, load: Load, log=lambda: "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}; answers so far: {load.summary()}\n{log()[-4000:]}"
        time.sleep(0.1)


def test_a_crashed_pool_fails_fast_with_a_reason_and_serving_recovers_when_a_node_returns(tmp_path: Path) -> None:
    store = gpu_only_store(pooled_store(tmp_path / "store"))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": node_resources(["cpu"])})
    cluster.add_node(num_cpus=1, resources=node_resources(["cpu"]))
    gpu_node = cluster.add_node(num_cpus=1, resources=node_resources(["gpu"]))  # a "gpu" pool node, no GPU
    cluster.wait_for_nodes()
    try:
        # The default dispatch timeout (30 s): failing fast must not come from it.
        with quiver_serve(str(store), "--address", cluster.address, "--replacement-wait-s", str(REPLACEMENT_WAIT_S)) as server, grpc.insecure_channel(server.address) as channel:
            started = time.monotonic()
            client = triton.InferenceServerClient(server.address)
            load = Load(server.address)
            threads = [threading.Thread(target=load.run, args=(model,), daemon=True) for model in ("pooled", "gpuonly") for _ in range(2)]
            for thread in threads:
                thread.start()
            wait_for(lambda: len(load.outcomes["gpuonly"]) >= 20 and len(load.outcomes["pooled"]) >= 20, 60, "first answers", load, server.own_log)
            assert (health(channel, ""), health(channel, INFERENCE), client.is_server_ready()) == ("SERVING", "SERVING", True)

            crashed_at = time.monotonic()
            crash(gpu_node)
            wait_for(lambda: health(channel, INFERENCE) == "NOT_SERVING" and not client.is_server_ready(), 15,
                     "the inference service to turn NOT_SERVING and the server not ready", load, server.own_log)
            noticed_s = time.monotonic() - crashed_at
            assert health(channel, "") == "SERVING"
            wait_for(lambda: sum(o.status == "UNAVAILABLE" for o in load.since("gpuonly", crashed_at + noticed_s)) >= 20
                     and sum(o.variant == "fp32" for o in load.since("pooled", crashed_at + noticed_s)) >= 20, 15,
                     "gpuonly to fail fast and pooled to move to fp32", load, server.own_log)
            # Still not ready: a Serve status that lists the dead replica as running does not outweigh
            # the router's failed calls to it (router/readiness.py).
            assert (health(channel, INFERENCE), client.is_server_ready()) == ("NOT_SERVING", False), server.own_log()
            down = load.since("gpuonly", crashed_at)

            returned_at = time.monotonic()
            print(f"\ncrash → NOT_SERVING in {noticed_s:.1f} s; {returned_at - started:.0f} s since the serve")
            cluster.add_node(num_cpus=1, resources=node_resources(["gpu"]))
            wait_for(lambda: sum(o.status == "OK" for o in load.since("gpuonly", returned_at)) >= 20, 90, "gpuonly to serve again", load, server.own_log)
            wait_for(lambda: health(channel, INFERENCE) == "SERVING" and client.is_server_ready(), 10, "health to return", load, server.own_log)
            recovered_s = time.monotonic() - returned_at
            load.stop.set()
            for thread in threads:
                thread.join(60)
            assert not any(thread.is_alive() for thread in threads), f"a request never returned: {load.summary()}"

        # Nothing lost: every request sent was answered, OK or with a status.
        assert sum(load.sent.values()) == sum(len(o) for o in load.outcomes.values())
        pooled = load.outcomes["pooled"]
        assert {o.status for o in pooled} == {"OK"}, f"pooled had another variant to serve: {load.summary()}"
        assert {o.variant for o in load.since("pooled", crashed_at + noticed_s) if o.sent_at < returned_at} == {"fp32"}
        assert noticed_s < 10, noticed_s
        # gpuonly during the outage: UNAVAILABLE with a reason, each within a few seconds (the
        # calls waiting on the crashed node, then the replacement window) or at once (every one
        # sent once the window had passed). Failing fast is the behaviour under test, so it is a time.
        assert {o.status for o in down if o.sent_at < returned_at} <= {"OK", "UNAVAILABLE"}
        failed = [o for o in down if o.status != "OK"]
        assert failed and max(o.seconds for o in failed) < 10 + REPLACEMENT_WAIT_S, sorted(o.seconds for o in failed)[-5:]
        late = [o for o in failed if o.sent_at > crashed_at + noticed_s + REPLACEMENT_WAIT_S]
        assert late and np.percentile([o.seconds for o in late], 99) < 0.5
        assert all("'fp32' (pool 'gpu')" in o.message for o in late), late[0].message
        print(f"back after {recovered_s:.1f} s; sent {dict(load.sent)}, answered by status: {load.summary()}")
        faults.record("cluster_loss", sent=dict(load.sent), answers=load.summary(), noticed_s=round(noticed_s, 1), recovered_s=round(recovered_s, 1))
    finally:
        try:
            cluster.shutdown()
        except Exception:  # noqa: BLE001 - the crashed node's processes are already gone
            pass
