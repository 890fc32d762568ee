"""The benchmark harness itself (benchmarks/): short runs that must return sane numbers, never timings.

The load generator runs in its own process, as the harness always runs it: it loads Quiver's
generated protobuf messages, which cannot share this process with tritonclient's.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import harness, models, report
from benchmarks.targets import TARGETS

QUICK = harness.BenchSettings(
    targets=("onnxruntime", "quiver"), models=("example",), concurrency=(2,), rates=(20.0,),
    seconds=1.0, warmup_s=0.3, rpc_timeout_s=30.0, ready_timeout_s=30.0,  # generous: load is no error
)


def _sane(record: dict) -> None:
    assert record["error"] is None, record
    assert record["ready"]["ok"], record["ready"]
    assert record["ready"]["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [1, 10]}]
    assert [p["point"] for p in record["points"]] == [{"mode": "closed", "concurrency": 2}, {"mode": "open", "rate": 20.0}]
    for point in record["points"]:
        assert point["errors"] == {}, point
        assert point["requests"] == point["sent"] > 0
        assert point["throughput"] > 0
        latency = point["latency_ms"]
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]


@pytest.mark.timeout(120)
def test_a_short_run_against_the_example_model_returns_sane_numbers_and_no_errors(tmp_path: Path) -> None:
    results = harness.run(QUICK, log=lambda line: None)

    assert [(r["model"], r["target"]) for r in results["runs"]] == [("example", "onnxruntime"), ("example", "quiver")]
    for record in results["runs"]:
        _sane(record)
    # 20 requests per second for one second, each one answered.
    assert results["runs"][1]["points"][1]["requests"] == 20
    assert results["meta"]["pinning"]["how"]

    json_path, markdown_path, plot_path = report.write(results, tmp_path)
    assert json.loads(json_path.read_text())["runs"][1]["target"] == "quiver"
    table = markdown_path.read_text()
    assert "| example | quiver | closed c=2 |" in table and "| example | onnxruntime | open 20/s |" in table
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(120)
def test_the_http_transports_drive_quiver_serves_rest_door(tmp_path: Path) -> None:
    """v2 REST, JSON and Triton's binary tensor data extension, against one `quiver serve`; its ready line names the port."""
    model = models.prepare(["example"], tmp_path)[0]
    settings = harness.BenchSettings(concurrency=(2,), rates=(20.0,), seconds=1.0, warmup_s=0.3, rpc_timeout_s=30.0,
                                     ready_timeout_s=30.0)
    launch = TARGETS["quiver-http"].launch(model, tmp_path, 1)
    with harness.started(launch, None, tmp_path / "quiver.log", settings.startup_timeout_s) as (address, session):
        for protocol in ("http", "http-binary"):
            record = harness.load(address, model, settings, cpus=None, scratch=tmp_path, server_session=session,
                                  protocol=protocol)
            _sane(record)
            assert record["points"][1]["requests"] == 20
            assert record["points"][0]["server_cpu_ms"] > 0
        # An answer other than 200 is counted by its status, and the server goes on serving.
        unknown = dataclasses.replace(model, name="no-such-model")
        brief = dataclasses.replace(settings, concurrency=(1,), rates=(), seconds=0.3, warmup_s=0.1, ready_timeout_s=0.3)
        record = harness.load(address, unknown, brief, cpus=None, scratch=tmp_path, protocol="http")
        assert record["ready"]["ok"] is False and record["ready"]["error"].startswith("HTTP_404"), record["ready"]
        assert set(record["points"][0]["errors"]) == {"HTTP_404"}
        _sane(harness.load(address, model, settings, cpus=None, scratch=tmp_path, protocol="http"))


@pytest.mark.parametrize(("protocol", "error"), [("grpc", "UNAVAILABLE"), ("http", "ClientConnectorError")])
def test_a_dead_target_is_reported_as_errors_not_a_crash(tmp_path: Path, protocol: str, error: str) -> None:
    with socket.socket() as probe:  # a port nobody listens on once this closes
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    model = models.prepare(["example"], tmp_path)[0]
    settings = harness.BenchSettings(concurrency=(2,), rates=(20.0,), seconds=0.5, warmup_s=0.1, ready_timeout_s=0.5)

    record = harness.load(address, model, settings, cpus=None, scratch=tmp_path, protocol=protocol)

    assert record["error"] is None
    assert record["ready"]["ok"] is False and error in record["ready"]["error"]
    assert len(record["points"]) == 2
    for point in record["points"]:
        assert point["requests"] == 0 and point["throughput"] == 0
        assert point["latency_ms"]["p50"] is None
        assert set(point["errors"]) == {error} and point["errors"][error] == point["sent"] > 0


def test_a_server_that_cannot_start_is_reported_not_raised(tmp_path: Path) -> None:
    model = models.prepare(["example"], tmp_path)[0]
    settings = harness.BenchSettings(concurrency=(1,), rates=(), seconds=0.2, warmup_s=0.1, startup_timeout_s=10)
    missing = model.__class__(**{**model.__dict__, "file": tmp_path / "missing.onnx"})

    record = harness.run_target("grpc-plain", missing, settings, harness.pinning(settings), tmp_path, log=lambda line: None)

    assert record["points"] == []
    assert "did not start" in record["error"] and "missing.onnx" in record["error"]



def test_cpu_per_process_reads_what_each_process_of_a_session_used() -> None:
    from benchmarks.process_cpu import process_cpu_s, used_between

    # Its own session, as a server's processes are. It says when it has started, burns 0.6 s of
    # CPU once told to, says so, then idles: the readings bracket the burn, whatever the load.
    burn = (
        "import sys, time\nprint('started', flush=True)\nsys.stdin.readline()\n"
        "end = time.process_time() + 0.6\nwhile time.process_time() < end: pass\n"
        "print('burnt', flush=True)\nsys.stdin.readline()"
    )
    busy = subprocess.Popen(
        [sys.executable, "-c", burn], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert busy.stdout.readline() == "started\n"
        before = process_cpu_s(busy.pid)
        busy.stdin.write("go\n")
        busy.stdin.flush()
        assert busy.stdout.readline() == "burnt\n"
        used = used_between(before, process_cpu_s(busy.pid))
    finally:
        busy.kill()
        busy.wait()
    assert len(used) == 1 and next(iter(used)).startswith(sys.executable), used
    # CPU seconds, not wall-clock ones: the burn plus a readline and a print, in /proc's clock ticks.
    assert 0.5 < next(iter(used.values())) <= 0.7, used
    assert process_cpu_s(busy.pid) == {}  # gone: nothing of its session is left to count
