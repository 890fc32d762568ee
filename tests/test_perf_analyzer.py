"""Triton's perf_analyzer, unmodified, against `quiver serve` over gRPC and HTTP, as a user runs it.

perf_analyzer reads the model's configuration first (Triton's ModelConfig) and the server's
statistics around every measurement window (ModelStatistics); it fails at once without them.
With `--shared-memory system` it registers regions for every input and output, and sends none
of their bytes; with `--streaming` its requests go on ModelStreamInfer.
It ships inside the tritonclient wheel and links libb64 and the CUDA runtime (no GPU used):
`make perf-analyzer` installs both (see the Makefile).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .serverproc import ServerProcess

PERF_ANALYZER = Path(sys.executable).parent / "perf_analyzer"
SERVER_LATENCY = re.compile(
    r"Avg request latency: \d+ usec \(overhead \d+ usec \+ queue (?P<queue>\d+) usec"
    r" \+ compute input \d+ usec \+ compute infer (?P<infer>\d+) usec \+ compute output \d+ usec\)"
)


def cuda_runtime_lib() -> Path:
    """libcudart.so.12's folder, from the nvidia-cuda-runtime-cu12 wheel (a test extra)."""
    try:
        import nvidia.cuda_runtime  # type: ignore[import-not-found]
    except ImportError:
        pytest.fail("nvidia-cuda-runtime-cu12 is not installed: run `make perf-analyzer`")
    return Path(next(iter(nvidia.cuda_runtime.__path__))) / "lib"


@pytest.fixture(scope="module")
def environment() -> dict[str, str]:
    paths = [str(cuda_runtime_lib()), os.environ.get("LD_LIBRARY_PATH", "")]
    env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(filter(None, paths))}
    linked = subprocess.run(["ldd", str(PERF_ANALYZER)], env=env, capture_output=True, text=True).stdout
    if missing := [line.strip() for line in linked.splitlines() if "not found" in line]:
        pytest.fail(f"perf_analyzer cannot load {missing}: run `make perf-analyzer`")
    return env


@pytest.mark.parametrize(
    ("protocol", "options"),
    [("grpc", []), ("grpc", ["--shared-memory", "system"]), ("grpc", ["--streaming"]),  # ModelStreamInfer
     ("http", []), ("http", ["--shared-memory", "system"])],
    ids=["grpc", "grpc-shared-memory", "grpc-streaming", "http", "http-shared-memory"],
)  # fmt: skip
def test_a_concurrency_sweep_runs_without_errors_and_shows_server_statistics(
    server: ServerProcess, environment: dict[str, str], protocol: str, options: list[str]
) -> None:
    url = server.address if protocol == "grpc" else server.http_url.removeprefix("http://")
    # Short windows; on a shared, noisy host any latency counts as stable (-s 100), within 5 tries each.
    command = [
        str(PERF_ANALYZER), "-m", "example", "-i", protocol, "-u", url, *options,
        "--concurrency-range", "1:4:2", "--measurement-interval", "500", "-s", "100", "-r", "5",
    ]  # fmt: skip
    run = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "error" not in output.lower() and "unable" not in output.lower(), output

    sections = output.split("Request concurrency: ")[1:]
    assert [section.split()[0] for section in sections] == ["1", "3"], output
    for section in sections:
        throughput = float(re.search(r"Throughput: ([\d.]+) infer/sec", section)[1])
        successes = int(re.search(r"Successful request count: (\d+)", section)[1])
        server_side = SERVER_LATENCY.search(section)
        assert throughput > 0 and successes > 0, section
        assert server_side and int(server_side["queue"]) > 0 and int(server_side["infer"]) > 0, section
