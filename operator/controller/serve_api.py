"""The Ray Serve REST API of the Ray dashboard: the one wrapper the operator deploys through.

`PUT /api/serve/applications/` takes the whole declarative config (ServeDeploySchema) and
makes the cluster match it, as KubeRay's RayService controller does. Several ModelDeployments
share one cluster, so every change reads the applications in force, replaces only those of
one model, and puts the whole set back, under one lock.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

AppConfig = dict[str, Any]


class ServeApiError(Exception):
    """The dashboard refused or could not be reached; the message says which and why."""


class ServeApi:
    def __init__(self, url: str, token: str | None = None, timeout_s: float = 30.0) -> None:
        self._url = url.rstrip("/") + "/api/serve/applications/"
        self._token = token
        self._timeout_s = timeout_s
        self._lock = threading.Lock()

    def statuses(self) -> dict[str, str]:
        """Every application's status (RUNNING, DEPLOYING, DEPLOY_FAILED, ...) by name."""
        return {name: app.get("status", "") for name, app in self._applications().items()}

    def running_replicas(self) -> dict[str, int]:
        """Replicas in state RUNNING per application, over all its deployments."""
        return {
            name: sum(
                replica.get("state") == "RUNNING"
                for deployment in (app.get("deployments") or {}).values()
                for replica in deployment.get("replicas") or []
            )
            for name, app in self._applications().items()
        }

    def messages(self) -> dict[str, str]:
        return {name: app.get("message", "") for name, app in self._applications().items()}

    def change(self, edit: Callable[[list[AppConfig]], list[AppConfig]]) -> None:
        """Apply `edit` to the deployed configs and put the result back, atomically for this process."""
        with self._lock:
            configs = [app["deployed_app_config"] for app in self._applications().values() if app.get("deployed_app_config")]
            self._call("PUT", {"proxy_location": "Disabled", "applications": edit(configs)})

    def put_apps(self, apps: list[AppConfig]) -> None:
        """Add or replace these applications; the others stay."""
        names = {app["name"] for app in apps}
        self.change(lambda configs: [c for c in configs if c["name"] not in names] + apps)

    def remove_apps(self, prefix: str) -> None:
        """Remove every application whose name starts with `prefix`."""
        self.change(lambda configs: [c for c in configs if not c["name"].startswith(prefix)])

    def _applications(self) -> dict[str, Any]:
        return self._call("GET").get("applications") or {}

    def _call(self, method: str, body: dict | None = None) -> dict:
        headers = {"Content-Type": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self._url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                text = response.read()
        except urllib.error.HTTPError as exc:
            raise ServeApiError(f"{method} {self._url}: HTTP {exc.code}: {exc.read().decode(errors='replace')[:500]}") from exc
        except OSError as exc:
            raise ServeApiError(f"{method} {self._url}: {exc}") from exc
        return json.loads(text) if text.strip() else {}
