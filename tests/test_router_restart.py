"""The router restarted behind a client that retries: nothing is lost.

A Ray head (tests/raycluster.py) runs the example model's Serve application; `quiver router`
joins it and serves it from a routes file, as on a cluster. A client process (its own, as a
user's: tests/clients/retrying_client.py, gRPC retries on UNAVAILABLE and wait-for-ready in a
service config) sends steady load while the router gets SIGTERM (it drains and exits 0) and a
new router process starts on the same port. Every request sent is answered OK.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from quiver.operator.serve_api import ServeApi
from quiver.serving import Replicas, VariantApp, build_example, from_onnx_file, write_version

from .raycluster import ray_head
from . import faults
from .serverproc import quiver_process

CLIENT = Path(__file__).parent / "clients" / "retrying_client.py"


def served_ok(metrics_url: str) -> float:
    """Requests this router answered OK, from its /metrics."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    return sum(float(m[1]) for m in re.finditer(r'^quiver_requests_total\{[^}]*code="OK"[^}]*\} (\S+)$', text, re.M))


def test_a_router_restarted_under_load_loses_no_request_of_a_retrying_client(tmp_path: Path) -> None:
    store = tmp_path / "store"
    signature = from_onnx_file(build_example(store / "example/1/model.onnx")).manifest
    variant = signature.variants[0].model_copy(update={"replicas": Replicas(num_cpus=0.5)})
    write_version(store, signature.model_copy(update={"name": "example", "version": "1", "variants": [variant]}))
    routes = tmp_path / "routes.json"
    routes.write_text(json.dumps({"models": {"example": {"1": 100}}}))

    with ray_head(num_cpus=2) as head:
        serve = ServeApi(head.dashboard_url, head.env["RAY_AUTH_TOKEN"])
        serve.put_apps([VariantApp(store=store, model="example", version="1", variant=variant.name).config()])
        deadline = time.monotonic() + 120
        while serve.statuses().get("example.1.fp32") != "RUNNING":
            assert time.monotonic() < deadline, serve.messages()
            time.sleep(0.5)

        env = {**os.environ, **head.env}
        args = ("--ray-address", head.gcs_address, "--store", str(store), "--routes", str(routes))
        client = None
        try:
            with quiver_process("router", *args, env=env) as first:
                port = int(first.address.rsplit(":", 1)[1])
                client = subprocess.Popen(
                    [sys.executable, str(CLIENT), first.address, "example"],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                )
                assert json.loads(client.stdout.readline()) == {"started": True}
                deadline = time.monotonic() + 60
                while served_ok(first.metrics_url) < 100:
                    assert time.monotonic() < deadline, first.log()[-3000:]
                    time.sleep(0.2)
            # The first router drained and exited 0 (quiver_process checks); the client kept sending.
            restarted_at = time.monotonic()
            with quiver_process("router", *args, env=env, port=port) as second:
                gap_s = time.monotonic() - restarted_at
                deadline = time.monotonic() + 60
                while served_ok(second.metrics_url) < 100:
                    assert time.monotonic() < deadline, second.log()[-3000:]
                    time.sleep(0.2)
                client.stdin.close()
                result = json.loads(client.stdout.readline())
                assert client.wait(60) == 0
        finally:
            if client is not None and client.poll() is None:
                client.kill()
                client.wait()

    print(f"\nrouter down for {gap_s:.1f} s; client: {result}")
    faults.record("router_restart", sent=result["sent"], answers=result["answers"], down_s=round(gap_s, 1))
    assert result["sent"] == sum(result["answers"].values()), result  # every request answered
    assert result["answers"] == {"OK": result["sent"]}, result  # and every answer OK
