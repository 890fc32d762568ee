"""A replica killed under the router: each request is answered, or fails with UNAVAILABLE
(never hangs, never INTERNAL); Serve starts a new replica and the same router serves again."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter

import numpy as np
import tritonclient.grpc as triton

from .serverproc import quiver_serve


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


def test_a_killed_replica_is_replaced_and_requests_are_answered() -> None:
    x = np.ones((1, 64), np.float32)
    with quiver_serve() as server:
        client = triton.InferenceServerClient(server.address)

        def status() -> str:
            tensor = triton.InferInput("input", [1, 64], "FP32")
            tensor.set_data_from_numpy(x)
            try:
                client.infer("example", [tensor], client_timeout=30)
            except triton.InferenceServerException as exc:
                return exc.status()
            return "OK"

        assert status() == "OK"
        (pid,) = replica_pids(server.process.pid)
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        seen = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and seen[-3:] != ["OK"] * 3:
            seen.append(status())
            if seen[-1] != "OK":
                time.sleep(0.2)
        took_s = time.monotonic() - killed_at
        print(f"\nafter the kill: sent {len(seen)}, answered by status: {dict(Counter(seen))}, in {took_s:.1f} s")
        assert set(seen) <= {"OK", "StatusCode.UNAVAILABLE"}, seen
        assert seen[-3:] == ["OK"] * 3, f"never served again after the replica died: {seen[-10:]}"
        replacements = replica_pids(server.process.pid)
        assert replacements and pid not in replacements
