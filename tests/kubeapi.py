"""The real API server (tests/k8s/control_plane.py) as the operator's tests and the chart's tests use it:
objects applied from YAML, the chart's CRD, and the operator's identity as the chart defines it.

The operator runs as the chart's ServiceAccount, bound by the chart's Role, both rendered by the
real `helm template`: a verb missing from the Role fails the test that needs it, with the API
server's Forbidden message (which names the verb and resource) in the operator's log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, dynamic

from tests import helm_chart as hc
from tests.k8s.control_plane import ControlPlane, wait_for

CRD_FILE = hc.CHART / "crds" / "modeldeployment.yaml"
KUBERAY_CRDS = hc.SCHEMAS / "kuberay" / "ray.io_rayclusters.v1.yaml"


def apply(api: client.ApiClient, objects: list[dict[str, Any]], namespace: str | None = None) -> None:
    """Create each object, or replace it when it exists (as `kubectl apply` would end up)."""
    resources = dynamic.DynamicClient(api).resources
    for obj in objects:
        resource = resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        ns = (obj["metadata"].get("namespace") or namespace) if resource.namespaced else None
        try:
            resource.create(body=obj, namespace=ns)
        except client.ApiException as exc:
            if exc.status != 409:
                raise
            current = resource.get(name=obj["metadata"]["name"], namespace=ns)
            obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": current.metadata.resourceVersion}}
            resource.replace(body=obj, namespace=ns)


def established(api: client.ApiClient, path: Path) -> None:
    """Apply the CRDs in `path` and wait until the API server serves them."""
    crds = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    apply(api, crds)
    ext = client.ApiextensionsV1Api(api)

    def served() -> bool:
        for crd in crds:
            conditions = ext.read_custom_resource_definition(crd["metadata"]["name"]).status.conditions or []
            if not any(c.type == "Established" and c.status == "True" for c in conditions):
                return False
        return True

    wait_for(served, f"the CRDs of {path.name} established", 60)


def operator_identity(cp: ControlPlane, namespace: str, workdir: Path, release: str = "quiver") -> Path:
    """The chart's operator ServiceAccount, Role and RoleBinding in `namespace`; returns a kubeconfig
    that authenticates as that ServiceAccount."""
    objects = hc.render(
        ["--show-only", "templates/operator-serviceaccount.yaml", "--show-only", "templates/operator-rbac.yaml"],
        release=release, namespace=namespace,
    )
    apply(cp.api(), objects, namespace)
    [account] = [o for o in objects if o["kind"] == "ServiceAccount"
                 and o["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"]
    return cp.service_account_kubeconfig(namespace, account["metadata"]["name"], workdir / "operator.kubeconfig")
