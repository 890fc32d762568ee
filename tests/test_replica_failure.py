"""The only replica killed under concurrent load: requests whose deadline leaves room for Serve
to start a replacement wait for it in the router and are answered; none is lost, none fails.
With the wait turned off (`--replacement-wait-s 0`) they fail fast with UNAVAILABLE and a
reason until the replacement registers; none is lost either. Either way the router's metrics
show the variant not ready meanwhile, and its probes missed."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import urllib.request
from collections import Counter

import numpy as np
from prometheus_client.parser import text_string_to_metric_families
import pytest
import tritonclient.grpc as triton

from .faults import record
from .serverproc import quiver_serve

CLIENTS = 8
# Room for a replacement replica: its process starts 10-15 s after the kill (Serve's health check
# period), then loads the model: ready within 15 s on a quiet machine, past 30 s once on CI's 2 cores.
DEADLINE_S = 60.0


def replica_pids(server_pid: int) -> list[int]:
    """The example's replica processes under this server (its local Ray instance's workers)."""
    rows = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True, check=True).stdout
    parent, args = {}, {}
    for row in rows.splitlines():
        pid, ppid, *command = row.split()
        parent[int(pid)], args[int(pid)] = int(ppid), " ".join(command)

    def under_server(pid: int) -> bool:
        while pid > 1:
            pid = parent.get(pid, 0)
            if pid == server_pid:
                return True
        return False

    return [pid for pid, command in args.items() if "ServeReplica:example.1.fp32" in command and under_server(pid)]


class Load:
    """CLIENTS threads, one request after another each, every outcome counted."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.stop = threading.Event()
        self.outcomes: Counter[str] = Counter()
        self.sent = 0
        self.messages: list[str] = []
        self._lock = threading.Lock()

    def run(self) -> None:
        client = triton.InferenceServerClient(self.address)
        tensor = triton.InferInput("input", [1, 64], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 64), np.float32))
        for _ in range(200_000):  # bounded; the test stops it sooner
            if self.stop.is_set():
                return
            with self._lock:
                self.sent += 1
            try:
                client.infer("example", [tensor], client_timeout=DEADLINE_S)
                status = "OK"
            except triton.InferenceServerException as exc:
                status = (exc.status() or "error").removeprefix("StatusCode.")
                with self._lock:
                    self.messages.append(exc.message() or "")
            with self._lock:
                self.outcomes[status] += 1


def variant_metrics(metrics_url: str) -> dict[str, float]:
    """The router's view of the example's fp32 variant (and the replica directory), from its /metrics."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in ("quiver_variant_ready", "quiver_variant_replicas", "quiver_probe_failures_total", "quiver_replica_directory_up")
        and sample.labels.get("variant", "fp32") == "fp32"
    }


class Readings:
    """The router's metrics, read every 0.1 s by a thread until stopped: a variant's readiness may drop
    for a few seconds only, and routing reads the gauges' source every 0.25 s."""

    def __init__(self, metrics_url: str) -> None:
        self.seen: list[dict[str, float]] = []
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(metrics_url,), daemon=True)
        self._thread.start()

    def _run(self, metrics_url: str) -> None:
        while not self.stop.wait(0.1):
            self.seen.append(variant_metrics(metrics_url))

    def close(self) -> list[dict[str, float]]:
        self.stop.set()
        self._thread.join(30)
        return self.seen


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.parametrize("wait_s", [DEADLINE_S, 0.0], ids=["waiting", "failing-fast"])
def test_a_killed_replica_is_replaced_and_requests_with_room_wait_for_it(wait_s: float) -> None:
    with quiver_serve("--replacement-wait-s", str(wait_s)) as server:
        load = Load(server.address)
        threads = [threading.Thread(target=load.run, daemon=True) for _ in range(CLIENTS)]
        for thread in threads:
            thread.start()
        try:
            # Killed once the router has been serving a while (its probes have seen the variant answer).
            wait_for(lambda: load.outcomes["OK"] >= 2_000, 120, "the first answers")
            (pid,) = replica_pids(server.process.pid)
            before = variant_metrics(server.metrics_url)
            readings = Readings(server.metrics_url)
            os.kill(pid, signal.SIGKILL)  # as the OOM killer sends it
            killed_at, answered = time.monotonic(), load.outcomes["OK"]
            wait_for(lambda: (replacements := replica_pids(server.process.pid)) and pid not in replacements, 90,
                     "Serve to start a replacement replica")
            replaced_s = time.monotonic() - killed_at
            # Served again, and for a while: the replacement has answered thousands.
            wait_for(lambda: load.outcomes["OK"] >= answered + 5_000, 120, "answers from the replacement")
            during = readings.close()
            after = variant_metrics(server.metrics_url)
        finally:
            load.stop.set()
            for thread in threads:
                thread.join(2 * DEADLINE_S)
        assert not any(thread.is_alive() for thread in threads), "a request never returned"
        print(f"\n--replacement-wait-s {wait_s:g}: sent {load.sent}, answered by status {dict(load.outcomes)} "
              f"(a replacement process {replaced_s:.1f} s after the kill)")
        record(f"replica_kill[wait={wait_s:g}]", clients=CLIENTS, deadline_s=DEADLINE_S, replacement_wait_s=wait_s,
               sent=load.sent, answered=dict(load.outcomes), replacement_started_s=round(replaced_s, 1))
        # The router's metrics saw it: ready with one replica before and after, not ready in between;
        # and the probes that went out while Serve still counted the dead replica got no answer.
        not_ready = sum(r["quiver_variant_ready"] == 0 for r in during)
        probes_missed = after["quiver_probe_failures_total"] - before["quiver_probe_failures_total"]
        print(f"quiver_variant_ready 0 in {not_ready} of {len(during)} readings (every 0.1 s), {probes_missed:g} probes missed")
        assert before["quiver_variant_ready"] == after["quiver_variant_ready"] == 1
        assert before["quiver_variant_replicas"] == after["quiver_variant_replicas"] == 1
        assert before["quiver_replica_directory_up"] == after["quiver_replica_directory_up"] == 1
        assert not_ready > 0 and probes_missed > 0
        # Nothing lost: every request sent has its outcome.
        assert load.sent == sum(load.outcomes.values())
        if wait_s:  # a deadline that leaves room for the replacement: none failed
            assert set(load.outcomes) == {"OK"}, f"{dict(load.outcomes)}: {load.messages[:3]}"
        else:  # each failure says why
            assert set(load.outcomes) <= {"OK", "UNAVAILABLE"}, f"{dict(load.outcomes)}: {load.messages[:3]}"
            assert all("'fp32'" in message for message in load.messages), load.messages[:3]
