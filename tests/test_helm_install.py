"""`helm install`, `upgrade`, `rollback` and `uninstall` for real, against the session's Kubernetes
v1.20 API server (tests/k8s/control_plane.py), KubeRay's CRD applied first so that the RayCluster
is validated by the server too.

Every object the chart renders must be admitted and stored as rendered: a 1.20 API server drops
fields it does not know from built-in kinds without a word (no strict field validation before
1.25), so each stored object is read back and compared field by field. The tests build on one
release in order: install, upgrade, rollback, uninstall. Nothing runs the pods (no node).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, dynamic
from kubernetes.dynamic.exceptions import NotFoundError, UnprocessibleEntityError

from tests import helm_chart as hc
from tests.k8s.control_plane import ControlPlane
from tests.kubeapi import KUBERAY_CRDS, established

GPU_VALUES = hc.ROOT / "examples" / "values-gpu.yaml"
RELEASE, NAMESPACE = "quiver", "helm-install"
CRD_NAME = "modeldeployments.serving.quiver.dev"


class Helm:
    def __init__(self, cp: ControlPlane) -> None:
        self.cp, self.api = cp, cp.api()
        self.resources = dynamic.DynamicClient(self.api).resources

    def __call__(self, *args: str | Path) -> str:
        return hc.helm(*args, "--kubeconfig", self.cp.admin).stdout

    def manifest(self, release: str, namespace: str) -> list[hc.Obj]:
        return [o for o in yaml.safe_load_all(self("get", "manifest", release, "-n", namespace)) if o]

    def stored(self, obj: hc.Obj, namespace: str) -> hc.Obj:
        resource = self.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        return resource.get(name=obj["metadata"]["name"], namespace=namespace if resource.namespaced else None).to_dict()

    def exists(self, api_version: str, kind: str, name: str, namespace: str | None) -> bool:
        try:
            self.resources.get(api_version=api_version, kind=kind).get(name=name, namespace=namespace)
        except NotFoundError:
            return False
        return True


def dropped(rendered: Any, stored: Any, path: str = "") -> list[str]:
    """Paths of the rendered object that the stored one lacks (what the API server pruned)."""
    if isinstance(rendered, dict):
        if not isinstance(stored, dict):
            return [path or "."]
        return [p for key, value in rendered.items() if value is not None
                for p in (dropped(value, stored[key], f"{path}.{key}") if key in stored else [f"{path}.{key}"])]
    if isinstance(rendered, list):
        if not isinstance(stored, list) or len(stored) < len(rendered):
            return [path]
        return [p for i, value in enumerate(rendered) for p in dropped(value, stored[i], f"{path}[{i}]")]
    return []


@pytest.fixture(scope="module")
def helm(control_plane: ControlPlane) -> Helm:
    established(control_plane.api(), KUBERAY_CRDS)
    return Helm(control_plane)


def install_and_compare(helm: Helm, release: str, namespace: str, *args: str | Path) -> list[hc.Obj]:
    helm("install", release, hc.CHART, "-n", namespace, "--create-namespace", *args)
    objects = helm.manifest(release, namespace)
    assert objects
    for obj in objects:
        missing = dropped(obj, helm.stored(obj, namespace))
        assert not missing, f"{obj['kind']}/{obj['metadata']['name']}: the API server dropped {missing}"
    return objects


def test_install_stores_every_object_as_rendered(helm: Helm) -> None:
    objects = install_and_compare(helm, RELEASE, NAMESPACE)
    kinds = {o["kind"]: o for o in objects}
    assert {"Deployment", "RayCluster", "Role", "RoleBinding", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= set(kinds)
    # What this 1.20 server serves, chosen from its discovery (.Capabilities.APIVersions).
    assert kinds["HorizontalPodAutoscaler"]["apiVersion"] == "autoscaling/v2beta2"
    assert kinds["PodDisruptionBudget"]["apiVersion"] == "policy/v1beta1"
    # The CRD from crds/, and the route table from its pre-install hook.
    assert helm.exists("apiextensions.k8s.io/v1", "CustomResourceDefinition", CRD_NAME, None)
    assert helm.exists("v1", "ConfigMap", f"{RELEASE}-routes", NAMESPACE)


def test_gpu_values_install_and_every_object_is_stored_as_rendered(helm: Helm) -> None:
    namespace = "helm-install-gpu"
    objects = install_and_compare(helm, RELEASE, namespace, "-f", GPU_VALUES)
    [ray] = hc.by_kind(objects, "RayCluster")
    assert any("gpu" in group["groupName"] for group in ray["spec"]["workerGroupSpecs"])
    helm("uninstall", RELEASE, "-n", namespace, "--wait")


def max_replicas(helm: Helm) -> int:
    hpas = helm.resources.get(api_version="autoscaling/v2beta2", kind="HorizontalPodAutoscaler")  # 1.20's newest
    return hpas.get(name=f"{RELEASE}-router", namespace=NAMESPACE).spec.maxReplicas


def test_upgrade_changes_values_and_leaves_the_crd_and_the_routes_alone(helm: Helm) -> None:
    core = client.CoreV1Api(helm.api)
    crd_version = client.ApiextensionsV1Api(helm.api).read_custom_resource_definition(CRD_NAME).metadata.resource_version
    routes = {"models": {"digits": {"1": 100}}}  # as the operator would have written them
    core.patch_namespaced_config_map(f"{RELEASE}-routes", NAMESPACE, {"data": {"routes.json": json.dumps(routes)}})
    helm("upgrade", RELEASE, hc.CHART, "-n", NAMESPACE, "--reuse-values", "--set", "router.autoscaling.maxReplicas=7")
    assert max_replicas(helm) == 7
    assert client.ApiextensionsV1Api(helm.api).read_custom_resource_definition(CRD_NAME).metadata.resource_version == crd_version
    assert json.loads(core.read_namespaced_config_map(f"{RELEASE}-routes", NAMESPACE).data["routes.json"]) == routes


def test_rollback_returns_to_the_installed_values(helm: Helm) -> None:
    default = yaml.safe_load((hc.CHART / "values.yaml").read_text())["router"]["autoscaling"]["maxReplicas"]
    helm("rollback", RELEASE, "1", "-n", NAMESPACE)
    assert max_replicas(helm) == default != 7
    assert [r["revision"] for r in json.loads(helm("history", RELEASE, "-n", NAMESPACE, "-o", "json"))] == [1, 2, 3]


def test_uninstall_keeps_the_store_the_routes_and_the_crd(helm: Helm) -> None:
    objects = helm.manifest(RELEASE, NAMESPACE)
    helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait")
    kept = {(o["kind"], o["metadata"]["name"]) for o in objects
            if o["metadata"].get("annotations", {}).get("helm.sh/resource-policy") == "keep"}
    assert ("PersistentVolumeClaim", f"{RELEASE}-models") in kept
    for obj in objects:
        there = helm.exists(obj["apiVersion"], obj["kind"], obj["metadata"]["name"], NAMESPACE)
        assert there == ((obj["kind"], obj["metadata"]["name"]) in kept), f"{obj['kind']}/{obj['metadata']['name']}"
    assert helm.exists("v1", "ConfigMap", f"{RELEASE}-routes", NAMESPACE)
    assert helm.exists("apiextensions.k8s.io/v1", "CustomResourceDefinition", CRD_NAME, None)


def test_a_1_20_server_refuses_or_drops_what_it_does_not_know(helm: Helm) -> None:
    """Why the chart follows the cluster's version: the plaintext router rendered for 1.27 (native
    gRPC probes) is refused here, since 1.20 drops the `grpc` field and a probe is left without a
    handler; rendered for 1.20 it is admitted. A newer field that leaves the object valid is
    dropped silently, which `dropped` sees."""
    namespace = "helm-install-drop"
    helm.cp.namespace(namespace)
    deployments = helm.resources.get(api_version="apps/v1", kind="Deployment")
    args = ["--show-only", "templates/router-deployment.yaml", "--set", "router.tls.enabled=false"]
    [for_1_27] = hc.render(["--kube-version", "1.27.0", *args], namespace=namespace)
    with pytest.raises(UnprocessibleEntityError) as refused:  # 422
        deployments.create(body=for_1_27, namespace=namespace)
    assert "readinessProbe: Required value: must specify a handler type" in str(refused.value)
    [router] = hc.render(["--kube-version", "1.20.2", *args], namespace=namespace)
    assert "exec" in router["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]  # the chart's, before 1.24
    router["spec"]["template"]["spec"]["os"] = {"name": "linux"}  # a pod field from 1.23 on
    deployments.create(body=router, namespace=namespace)
    assert dropped(router, helm.stored(router, namespace)) == [".spec.template.spec.os"]
