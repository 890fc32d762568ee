"""A Ray head node with its dashboard (the Serve REST API), in a child process, as a cluster's head.

What the operator deploys to and `quiver router` joins in the operator's tests. The child is a
Ray driver that started a local instance and waits; closing its stdin ends it (and its Ray).
Token authentication is on, as on a cluster: every party gets the token from the environment.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

_HEAD = """
import json, os, sys, ray
ctx = ray.init(address="local", num_cpus={num_cpus}, resources={resources}, include_dashboard=True,
               dashboard_host="127.0.0.1", dashboard_port={dashboard_port}, logging_level="WARNING")
print(json.dumps({{"gcs": ctx.address_info["gcs_address"]}}), flush=True)
sys.stdin.read()
ray.shutdown()
"""


@dataclass(frozen=True)
class RayHead:
    gcs_address: str
    dashboard_url: str
    env: dict[str, str]  # what a process needs to join: the auth token

    def serve_applications(self) -> dict:
        request = urllib.request.Request(
            f"{self.dashboard_url}/api/serve/applications/",
            headers={"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response).get("applications") or {}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def ray_head(num_cpus: int = 4, pools: tuple[str, ...] = ("cpu",), timeout_s: float = 120) -> Iterator[RayHead]:
    dashboard_port = free_port()
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16), "RAY_USAGE_STATS_ENABLED": "0"}
    resources = {f"pool-{pool}": 10_000.0 for pool in pools}
    script = _HEAD.format(num_cpus=num_cpus, resources=resources, dashboard_port=dashboard_port)
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, **env}
    )
    try:
        line = process.stdout.readline()
        if not line:
            raise RuntimeError("the Ray head did not start")
        head = RayHead(json.loads(line)["gcs"], f"http://127.0.0.1:{dashboard_port}", env)
        deadline = time.monotonic() + timeout_s
        while True:  # the dashboard's Serve module answers a little after Ray itself
            try:
                head.serve_applications()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield head
    finally:
        process.stdin.close()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
