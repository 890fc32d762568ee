"""The Kubernetes API as the operator uses it: Jobs, the routes ConfigMap, router pods.

The one wrapper around the `kubernetes` client (kopf itself watches the ModelDeployments).
Calls are blocking; the handlers that make them run in kopf's thread pool.
"""

from __future__ import annotations

import enum
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException
from urllib3.exceptions import HTTPError as ApiUnreachable  # connection refused, broken or timed out

ROUTES_KEY = "routes.json"
ROUTES_ATTEMPTS = 10  # conflicting writers are rare: a few retries settle them

# What a failed call raises: ApiException when the API server answered with an error,
# ApiUnreachable when it could not be reached (restarting, say).
__all__ = ["ApiException", "ApiUnreachable", "JobPhase", "JobState", "Kube", "connect"]


def connect() -> client.ApiClient:
    """In a pod, its service account; elsewhere, the kubeconfig (KUBECONFIG)."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


class JobPhase(str, enum.Enum):
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    MISSING = "Missing"


@dataclass(frozen=True)
class JobState:
    phase: JobPhase
    reason: str = ""
    message: str = ""


class Kube:
    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self._batch = client.BatchV1Api(api)
        self._core = client.CoreV1Api(api)
        self._namespace = namespace
        self._routes_lock = threading.Lock()

    # Jobs

    def create_job(self, manifest: dict[str, Any]) -> None:
        """Create the Job unless it exists (a handler that runs again must not start a second one)."""
        try:
            self._batch.create_namespaced_job(self._namespace, manifest)
        except ApiException as exc:
            if exc.status != 409:
                raise

    def delete_job(self, name: str) -> None:
        """Delete the Job and its pods (the API's default would leave the pods running); gone already is fine."""
        try:
            self._batch.delete_namespaced_job(name, self._namespace, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise

    def job_state(self, name: str) -> JobState:
        try:
            job = self._batch.read_namespaced_job(name, self._namespace)
        except ApiException as exc:
            if exc.status == 404:
                return JobState(JobPhase.MISSING)
            raise
        status = job.status
        for condition in (status.conditions or []) if status else []:
            if condition.status == "True" and condition.type in ("Failed", "Complete"):
                phase = JobPhase.FAILED if condition.type == "Failed" else JobPhase.SUCCEEDED
                return JobState(phase, condition.reason or "", condition.message or "")
        if status and status.succeeded:
            return JobState(JobPhase.SUCCEEDED)
        return JobState(JobPhase.RUNNING)

    # The route table the routers mount

    def edit_routes(self, configmap: str, edit: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        """Read the routes file, apply `edit`, write it back. The write carries the read's
        resourceVersion, so the API server refuses it (409 Conflict) if anyone wrote the ConfigMap
        in between (a second operator, a person with kubectl); then read again and edit again,
        so no edit is lost. The lock keeps this operator's own edits from racing each other."""
        with self._routes_lock:
            for _ in range(ROUTES_ATTEMPTS):
                try:
                    current = self._core.read_namespaced_config_map(configmap, self._namespace)
                except ApiException as exc:
                    if exc.status != 404:
                        raise
                    content = json.dumps(edit({"models": {}}), indent=1, sort_keys=True)
                    body = {"metadata": {"name": configmap, "namespace": self._namespace}, "data": {ROUTES_KEY: content}}
                    if self._written(lambda: self._core.create_namespaced_config_map(self._namespace, body)):
                        return
                    continue
                routes = json.loads((current.data or {}).get(ROUTES_KEY) or '{"models": {}}')
                content = json.dumps(edit(routes), indent=1, sort_keys=True)
                body = {"metadata": {"resourceVersion": current.metadata.resource_version}, "data": {ROUTES_KEY: content}}
                if self._written(lambda: self._core.patch_namespaced_config_map(configmap, self._namespace, body)):
                    return
            raise ApiException(status=409, reason=f"configmap {configmap} changed under each of {ROUTES_ATTEMPTS} edits")

    @staticmethod
    def _written(write: Callable[[], object]) -> bool:
        """False when the API server refused the write as a conflict (409)."""
        try:
            write()
        except ApiException as exc:
            if exc.status != 409:
                raise
            return False
        return True

    # Routers

    def pod_ips(self, selector: str) -> list[str]:
        pods = self._core.list_namespaced_pod(self._namespace, label_selector=selector).items
        return [pod.status.pod_ip for pod in pods if pod.status and pod.status.pod_ip and pod.status.phase == "Running"]
