"""What a cluster does beside the API server, played by the operator's tests through that API.

- `Kubelet` copies the routes ConfigMap into the file the router watches, as a ConfigMap
  volume does (atomically, a moment after the change).
- `JobRunner` runs each optimization Job's command here (`quiver optimize`, the same command
  the Job's pod would run) and records the outcome in the Job's status, as the Job controller would.
- `Operator` runs `quiver operator` in a child process that a test can kill and start again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from kubernetes import client
from kubernetes.client.rest import ApiException

NAMESPACE = "test"


class _Loop(threading.Thread):
    def __init__(self, name: str, body: Callable[[], None], interval_s: float) -> None:
        super().__init__(name=name, daemon=True)
        self._body, self._interval_s, self._halt = body, interval_s, threading.Event()
        self.errors: list[str] = []

    def run(self) -> None:
        while not self._halt.wait(self._interval_s):
            try:
                self._body()
            except Exception as exc:  # noqa: BLE001 - recorded for the test to show; the loop goes on
                self.errors.append(repr(exc))

    def stop(self) -> None:
        self._halt.set()
        self.join(30)


class Kubelet(_Loop):
    def __init__(self, api: client.ApiClient, configmap: str, target: Path) -> None:
        self._core, self._configmap, self._routes_file = client.CoreV1Api(api), configmap, target
        self._last: str | None = None
        super().__init__("kubelet", self._sync, 0.2)

    def _sync(self) -> None:
        try:
            data = self._core.read_namespaced_config_map(self._configmap, NAMESPACE).data or {}
        except ApiException as exc:
            if exc.status == 404:
                return
            raise
        content = data.get("routes.json")
        if content is not None and content != self._last:
            scratch = self._routes_file.with_suffix(".tmp")
            scratch.write_text(content)
            scratch.replace(self._routes_file)
            self._last = content


class JobRunner(_Loop):
    def __init__(self, api: client.ApiClient, log: Path) -> None:
        self._batch, self._log = client.BatchV1Api(api), log
        self.commands: list[list[str]] = []
        super().__init__("jobs", self._run_new_jobs, 0.3)

    def _run_new_jobs(self) -> None:
        for job in self._batch.list_namespaced_job(NAMESPACE).items:
            if job.status and (job.status.succeeded or job.status.failed):
                continue
            command = job.spec.template.spec.containers[0].command
            self.commands.append(command)
            assert command[0] == "quiver"
            with self._log.open("a") as log:
                done = subprocess.run([sys.executable, "-m", "quiver", *command[1:]], stdout=log, stderr=subprocess.STDOUT)
            if done.returncode == 0:
                status = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
            else:
                status = {"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                                       "message": f"quiver optimize exited with {done.returncode}"}]}
            self._batch.patch_namespaced_job_status(job.metadata.name, NAMESPACE, {"status": status})


class Operator:
    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self._args, self._env, self._log = args, env, log
        self._process: subprocess.Popen | None = None

    def start(self) -> None:
        with self._log.open("a") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "quiver", "operator", *self._args, "--log-level", "INFO"],
                stdout=log, stderr=subprocess.STDOUT, env={**self._env, "PYTHONUNBUFFERED": "1"},
            )

    def kill(self) -> None:
        """As a node failure would: no chance to clean up."""
        assert self._process is not None
        self._process.send_signal(signal.SIGKILL)
        self._process.wait(30)

    def stop(self) -> None:
        if self._process and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def log(self) -> str:
        return self._log.read_text() if self._log.exists() else ""


def environment(extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **extra}


def routes(path: Path) -> dict:
    return json.loads(path.read_text())
