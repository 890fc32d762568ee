"""What a node does beside the control plane, played by the operator's tests through the real API
(the test cluster has no node: tests/k8s/control_plane.py).

- `Kubelet` copies the routes ConfigMap into the file the router watches, as a ConfigMap
  volume does (atomically, a moment after the change).
- `JobRunner` runs the pod that the real Job controller creates for each optimization Job: its
  command here (`quiver optimize`, what the pod's container would run), its outcome reported as
  the pod's phase, from which the Job controller completes or fails the Job.
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
        self._core, self._log = client.CoreV1Api(api), log
        self.commands: list[list[str]] = []
        super().__init__("jobs", self._run_new_pods, 0.3)

    def _run_new_pods(self) -> None:
        for pod in self._core.list_namespaced_pod(NAMESPACE, label_selector="job-name").items:
            if pod.status and pod.status.phase in ("Succeeded", "Failed"):
                continue
            command = pod.spec.containers[0].command
            self.commands.append(command)
            assert command[0] == "quiver"
            with self._log.open("a") as log:
                done = subprocess.run([sys.executable, "-m", "quiver", *command[1:]], stdout=log, stderr=subprocess.STDOUT)
            phase = "Succeeded" if done.returncode == 0 else "Failed"
            self._core.patch_namespaced_pod_status(pod.metadata.name, NAMESPACE, {"status": {"phase": phase}})


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
