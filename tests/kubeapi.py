"""kmock's Kubernetes emulator on a loopback port, in a thread, with the resources the operator uses.

The emulator keeps objects as JSON and serves list/watch/get/create/patch/delete; it is the
real HTTP API the real kopf operator and the real kubernetes client talk to (README.md, "The
operator: ModelDeployment").
What a cluster would do beside the API server (kubelet mounting a ConfigMap, a Job's pod
running) the tests play themselves, through the same API.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from kmock import KubernetesEmulator, ResourceInfo, Server, action
from kubernetes import client, config

RESOURCES = {
    "serving.quiver.dev/v1alpha1/modeldeployments": ResourceInfo(
        kind="ModelDeployment", singular="modeldeployment", namespaced=True, shortnames={"md"},
        verbs={"get", "list", "watch", "create", "patch", "update", "delete"}, subresources={"status"},
    ),
    "batch/v1/jobs": ResourceInfo(kind="Job", singular="job", namespaced=True, verbs={"get", "list", "watch", "create", "patch", "delete"}),
    "v1/configmaps": ResourceInfo(kind="ConfigMap", singular="configmap", namespaced=True, verbs={"get", "list", "watch", "create", "patch"}),
    "v1/pods": ResourceInfo(kind="Pod", singular="pod", namespaced=True, verbs={"get", "list"}),
    # kopf waits until discovery shows these two, even with scanning off (it lists neither then).
    "v1/namespaces": ResourceInfo(kind="Namespace", singular="namespace", namespaced=False, verbs={"get", "list", "watch"}),
    "apiextensions.k8s.io/v1/customresourcedefinitions": ResourceInfo(
        kind="CustomResourceDefinition", singular="customresourcedefinition", namespaced=False, verbs={"get", "list", "watch"},
    ),
    "v1/events": ResourceInfo(kind="Event", singular="event", namespaced=True, verbs={"create"}),
    "events.k8s.io/v1/events": ResourceInfo(kind="Event", singular="event", namespaced=True, verbs={"create"}),
}


class ApiServer(KubernetesEmulator):
    """The emulator plus the metadata an API server keeps and kopf relies on: `resourceVersion`
    on every write (kopf's JSON patches test it), `generation` bumped by spec changes, `uid`."""

    _versions = itertools.count(1)

    async def _handle(self, request):  # type: ignore[no-untyped-def]
        if request.resource is not None and request.action in (action.CREATE, action.UPDATE):
            version, data = str(next(self._versions)), request.data
            if isinstance(data, list):  # a JSON patch: its "test" ops see the old version first
                data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})
            elif isinstance(data, dict):
                metadata = data.setdefault("metadata", {})
                metadata["resourceVersion"] = version
                if request.action == action.CREATE:
                    metadata.setdefault("generation", 1)
                    metadata.setdefault("uid", str(uuid.uuid4()))
                elif "spec" in data and request.name is not None:
                    current = self.objects[request.resource, request.namespace, request.name]
                    metadata["generation"] = current.get("metadata", {}).get("generation", 1) + 1
        return await super()._handle(request)


@contextmanager
def kubernetes_api(workdir: Path) -> Iterator[tuple[Path, client.ApiClient]]:
    """Yields a kubeconfig for the emulator and a client configured from it."""
    started = threading.Event()
    stop: asyncio.Event | None = None
    loop: asyncio.AbstractEventLoop | None = None
    url: list[str] = []

    async def serve() -> None:
        nonlocal stop, loop
        loop, stop = asyncio.get_running_loop(), asyncio.Event()
        async with ApiServer() as emulator, Server(emulator) as server:
            for key, info in RESOURCES.items():
                emulator.resources[key] = info
            url.append(str(server.url).rstrip("/"))
            started.set()
            await stop.wait()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), name="kmock", daemon=True)
    thread.start()
    assert started.wait(30), "the Kubernetes emulator did not start"
    kubeconfig = workdir / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": url[0]}}],
        "users": [{"name": "test", "user": {"token": "test"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "test", "namespace": "test"}}],
    }))
    try:
        yield kubeconfig, config.new_client_from_config(str(kubeconfig))
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
