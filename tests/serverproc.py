"""`quiver serve` or `quiver router` in a child process, as a user runs it: started, awaited, stopped with SIGTERM.

The server runs in its own process also because Quiver's generated `inference` protobuf
messages and tritonclient's cannot be loaded into one process (duplicate descriptor symbols).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours the process names in the lines it forwards
READY = re.compile(
    r"^ready: (?P<address>\S+) models=(?P<models>\S*)(?: http=(?P<http>\S+))?(?: metrics=(?P<metrics>\S+))?$"
)


@dataclass
class ServerProcess:
    process: subprocess.Popen
    address: str = ""
    models: str = ""
    metrics_url: str = ""
    http_url: str = ""  # the REST door, e.g. http://127.0.0.1:PORT
    output: list[str] = field(default_factory=list)

    def log(self) -> str:
        return "".join(self.output)

    def own_log(self) -> str:
        """The log less Ray's C++ lines and its Serve controller's, which repeat every few seconds
        while part of the cluster is away and would fill a failure message's tail."""
        return "".join(line for line in self.output if not ANSI.sub("", line).startswith(("[", "(ServeController")))


@contextmanager
def quiver_serve(*args: str, startup_timeout_s: float = 180) -> Iterator[ServerProcess]:
    """Run `quiver serve ARGS --port 0`; yields once it prints its ready line."""
    with quiver_process("serve", *args, startup_timeout_s=startup_timeout_s) as server:
        yield server


@contextmanager
def quiver_process(
    command: str, *args: str, startup_timeout_s: float = 180, env: dict[str, str] | None = None, port: int = 0
) -> Iterator[ServerProcess]:
    """Run `quiver COMMAND ARGS --port PORT --http-port 0 --metrics-port 0`; yields once it prints its ready line."""
    process = subprocess.Popen(
        [sys.executable, "-m", "quiver", command, *args, "--port", str(port), "--http-port", "0", "--metrics-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**(env or os.environ), "PYTHONUNBUFFERED": "1"},
    )
    server = ServerProcess(process)
    ready = threading.Event()

    def drain() -> None:  # keeps the pipe from filling and watches for the ready line
        for line in process.stdout:
            server.output.append(line)
            if match := READY.match(line.strip()):
                server.address, server.models = match["address"], match["models"]
                server.http_url, server.metrics_url = match["http"] or "", match["metrics"] or ""
                ready.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    deadline = time.monotonic() + startup_timeout_s
    while not ready.wait(0.2):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            reader.join(5)
            raise RuntimeError(f"quiver {command} did not become ready:\n{server.log()}")
    try:
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(120)  # a drain of up to 10 s, then Ray's shutdown: slow on a busy machine
        except subprocess.TimeoutExpired:
            process.kill()
            reader.join(5)
            raise AssertionError(f"quiver {command} did not stop within 120 s of SIGTERM:\n{server.own_log()[-6000:]}") from None
        reader.join(5)
        assert code == 0, f"quiver {command} exited with {code}:\n{server.log()}"
