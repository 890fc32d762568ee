"""The Helm chart (helm/quiver), checked with the real `helm` binary and the real schemas.

Renders the chart as a user would (`helm template`, `helm lint --strict`), then checks what
the API servers would: core objects against Kubernetes' own schemas (kubernetes-validate, for
the oldest and newest Kubernetes the chart supports), the RayCluster against KubeRay's CRD, the
examples against the ModelDeployment CRD; then what a reviewer would: resources, probes and
security contexts on every container, GPU placement, least-privilege RBAC, and that the names
the components find each other by agree. Nothing here needs a cluster.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests import helm_chart as hc
from tests.certs import Authority

GPU_VALUES = hc.ROOT / "examples" / "values-gpu.yaml"
CRD_FILE = hc.CHART / "crds" / "modeldeployment.yaml"
KUBERAY_CRD = hc.SCHEMAS / "kuberay" / "ray.io_rayclusters.v1.yaml"
# Native gRPC probes' GA (the chart renders them from 1.24 on) and the newest kubernetes-validate
# knows; the oldest the chart supports (1.20) is checked by a real API server: test_helm_install.py.
KUBERNETES_VERSIONS = ["1.27.0", "1.37.0"]
# Kinds that are not core Kubernetes: checked against their own CRDs below.
CUSTOM_KINDS = {"RayCluster", "ServiceMonitor"}

# Every optional part switched on: mTLS, keys, NetworkPolicy, ServiceMonitor, pull secrets.
EVERYTHING = {
    "imagePullSecrets": [{"name": "registry"}],
    "router": {
        "tls": {"clientCA": {"enabled": True, "secretName": "client-ca"}, "probeClientSecret": "probe-client"},
        "autoscaling": {"enabled": False},
    },
    "modelSecurity": {"encryptionKeySecret": "model-key", "verifyKeySecret": "verify-key"},
    "networkPolicy": {"enabled": True, "metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]},
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "modelStore": {"existingClaim": "shared-models"},
}
# A trial: no TLS, no tokens, no Ray token authentication.
PLAINTEXT = {"router": {"tls": {"enabled": False}, "tokens": {"enabled": False}}, "ray": {"auth": {"enabled": False}}}

SETUPS = {
    "default": ((), None),
    "gpu": ((GPU_VALUES,), None),
    "everything": ((GPU_VALUES,), EVERYTHING),
    "plaintext": ((), PLAINTEXT),
}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[hc.Obj]]:
    tmp = tmp_path_factory.mktemp("values")
    return {name: hc.render(hc.value_args(values, tmp, files)) for name, (files, values) in SETUPS.items()}


def render_with(values: dict, tmp_path: Path) -> list[hc.Obj]:
    return hc.render(hc.value_args(values, tmp_path))


# --- helm itself ------------------------------------------------------------------------------


@pytest.mark.parametrize("values_files", [(), (GPU_VALUES,)], ids=["default", "gpu"])
def test_lint_strict_passes(values_files: tuple[Path, ...]) -> None:
    args = [arg for path in values_files for arg in ("-f", str(path))]
    result = hc.helm("lint", "--strict", hc.CHART, *args)
    assert "0 chart(s) failed" in result.stdout


def test_template_renders_every_component(rendered: dict[str, list[hc.Obj]]) -> None:
    for name in ("default", "gpu"):
        kinds = {o["kind"] for o in rendered[name]}
        assert {
            "Deployment", "Service", "ServiceAccount", "Role", "RoleBinding", "ConfigMap",
            "PersistentVolumeClaim", "HorizontalPodAutoscaler", "PodDisruptionBudget", "RayCluster", "Pod",
        } <= kinds, name
    everything = {o["kind"] for o in rendered["everything"]}
    assert {"NetworkPolicy", "ServiceMonitor"} <= everything
    assert "HorizontalPodAutoscaler" not in everything
    # The models' claim exists already (modelStore.existingClaim): only the head's GCS claim is made.
    assert [o["metadata"]["name"] for o in hc.by_kind(rendered["everything"], "PersistentVolumeClaim")] == ["quiver-ray-gcs"]


def test_notes_say_how_to_reach_the_router_and_what_to_create() -> None:
    notes = hc.helm("install", "quiver", hc.CHART, "-n", "quiver", "--dry-run=client").stdout.split("NOTES:", 1)[1]
    assert "quiver-router.quiver:8001" in notes
    assert "create secret tls quiver-router-tls" in notes and "quiver-router-tokens" in notes
    assert "modeldeployment" in notes and "kubectl apply -f helm/quiver/crds/" in notes


# --- what the API servers would accept ---------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("setup", list(SETUPS))
def test_core_objects_validate_against_kubernetes(rendered: dict[str, list[hc.Obj]], setup: str, version: str) -> None:
    checked = 0
    for obj in rendered[setup]:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(map(str, error.path))
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} on Kubernetes {version}: {path}: {error.message}")
        checked += 1
    assert checked >= 12


@pytest.fixture(scope="module")
def raycluster_validator() -> jsonschema.Draft7Validator:
    [schema] = hc.crd_schemas(KUBERAY_CRD).values()
    return jsonschema.Draft7Validator(hc.strict_structural(schema))


@pytest.mark.parametrize("setup", list(SETUPS))
def test_raycluster_validates_against_kuberay_crd(
    rendered: dict[str, list[hc.Obj]], setup: str, raycluster_validator: jsonschema.Draft7Validator
) -> None:
    cluster = hc.one(rendered[setup], "RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in raycluster_validator.iter_errors(cluster)]
    assert not errors, errors


def test_kuberay_schema_refuses_a_typo(raycluster_validator: jsonschema.Draft7Validator, rendered) -> None:
    # The check above is only worth something if an unknown field fails it.
    cluster = json.loads(json.dumps(hc.one(rendered["default"], "RayCluster")))
    cluster["spec"]["workerGroupSpecs"][0]["rayStartParam"] = {}
    assert not raycluster_validator.is_valid(cluster)


def test_servicemonitor_selects_the_router_metrics_port(rendered: dict[str, list[hc.Obj]]) -> None:
    monitor = hc.one(rendered["everything"], "ServiceMonitor")
    service = hc.one(rendered["everything"], "Service", "-router")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    assert "metrics" in [p["name"] for p in service["spec"]["ports"]]


def test_crd_ships_in_crds_and_accepts_the_examples() -> None:
    # The CRD lives in crds/: Helm installs it before the templates and never upgrades it.
    assert CRD_FILE.exists(), f"{CRD_FILE} is missing"
    schemas = hc.crd_schemas(CRD_FILE)
    assert ("serving.quiver.dev/v1alpha1", "ModelDeployment") in schemas
    [crd] = [d for d in yaml.safe_load_all(CRD_FILE.read_text()) if d]
    assert crd["spec"]["names"]["plural"] == "modeldeployments"
    assert "md" in crd["spec"]["names"].get("shortNames", [])
    assert crd["spec"]["scope"] == "Namespaced"
    shown = hc.helm("show", "crds", hc.CHART).stdout
    assert "name: modeldeployments.serving.quiver.dev" in shown

    examples = sorted((hc.ROOT / "examples").glob("modeldeployment*.yaml"))
    assert examples, "no examples/modeldeployment*.yaml"
    for path in examples:
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            schema = schemas[(doc["apiVersion"], doc["kind"])]
            errors = [
                f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
                for e in jsonschema.Draft7Validator(hc.strict_structural(schema)).iter_errors(doc)
            ]
            assert not errors, f"{path.name}: {errors}"


# --- wrong values fail, saying why -------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"pools": [{"minReplicas": 1, "maxReplicas": 2}]}, "at '/pools/0': missing property 'name'"),
        (
            {"pools": [{"name": "cpu", "replicas": -1, "minReplicas": 0, "maxReplicas": 2}]},
            "at '/pools/0/replicas': minimum: got -1, want 0",
        ),
        ({"router": {"replica": 3}}, "at '/router': additional properties 'replica' not allowed"),
        ({"routers": {}}, "additional properties 'routers' not allowed"),
        ({"router": {"tls": {"enabled": "yes"}}}, "at '/router/tls/enabled': got string, want boolean"),
        ({"pools": [{"name": "GPU", "minReplicas": 0, "maxReplicas": 1}]}, "at '/pools/0/name'"),
        ({"pools": [{"name": "cpu", "minReplicas": 0, "maxReplicas": 1, "gpu": 1}]}, "additional properties 'gpu'"),
        ({"pools": []}, "at '/pools': minItems"),
        ({"router": {"capture": {"enabled": True, "rate": 1.5}}}, "at '/router/capture/rate': maximum: got 1.5, want 1"),
    ],
    ids=["pool-without-name", "negative-replicas", "unknown-key", "unknown-section", "wrong-type",
         "bad-pool-name", "pool-typo", "no-pools", "capture-rate"],
)
def test_wrong_values_fail_with_the_schema_message(values: dict, message: str, tmp_path: Path) -> None:
    result = hc.helm("template", "quiver", hc.CHART, *hc.value_args(values, tmp_path), check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("pools", "message"),
    [
        ([{"name": "cpu", "minReplicas": 0, "maxReplicas": 1}] * 2, 'the name "cpu" is used twice'),
        ([{"name": "cpu", "replicas": 5, "minReplicas": 1, "maxReplicas": 4}], "must lie between minReplicas"),
    ],
    ids=["duplicate-pool", "replicas-out-of-range"],
)
def test_inconsistent_pools_fail(pools: list, message: str, tmp_path: Path) -> None:
    result = hc.helm("template", "quiver", hc.CHART, *hc.value_args({"pools": pools}, tmp_path), check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


# --- what a reviewer checks --------------------------------------------------------------------


@pytest.mark.parametrize("setup", list(SETUPS))
def test_every_container_has_resources_probes_and_a_locked_down_security_context(
    rendered: dict[str, list[hc.Obj]], setup: str
) -> None:
    seen = 0
    for where, metadata, spec in hc.pod_templates(rendered[setup]):
        is_hook = "helm.sh/hook" in metadata.get("annotations", {})
        pod_security = spec.get("securityContext", {})
        assert pod_security.get("runAsNonRoot") is True, where
        assert pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        tmp_volumes = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for container in hc.containers(spec):
            name = f"{where} container {container['name']}"
            resources = container.get("resources", {})
            assert {"cpu", "memory"} <= resources.get("requests", {}).keys(), name
            assert "memory" in resources.get("limits", {}), name
            if not is_hook:  # a run-to-completion test pod has nothing to probe
                assert "livenessProbe" in container and "readinessProbe" in container, name
            security = container.get("securityContext", {})
            assert security.get("runAsNonRoot") is True, name
            assert security.get("allowPrivilegeEscalation") is False, name
            assert security.get("readOnlyRootFilesystem") is True, name
            assert security.get("capabilities", {}).get("drop") == ["ALL"], name
            if not is_hook:  # long-running processes get a writable /tmp
                tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
                assert tmp and tmp[0]["name"] in tmp_volumes, name
            seen += 1
    assert seen >= 5
    # The autoscaler sidecar KubeRay adds to the head pod is configured through the RayCluster.
    autoscaler = hc.one(rendered[setup], "RayCluster")["spec"]["autoscalerOptions"]
    assert {"cpu", "memory"} <= autoscaler["resources"]["requests"].keys()
    assert autoscaler["securityContext"]["readOnlyRootFilesystem"] is True
    assert autoscaler["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_gpu_pool_requests_gpus_and_lands_only_on_gpu_nodes(rendered: dict[str, list[hc.Obj]]) -> None:
    groups = {g["groupName"]: g for g in hc.one(rendered["gpu"], "RayCluster")["spec"]["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    gpu = groups["gpu"]["template"]["spec"]
    [worker] = gpu["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert gpu["nodeSelector"] == {"nvidia.com/gpu.present": "true", "node-pool": "gpu"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu["tolerations"]

    cpu = groups["cpu"]["template"]["spec"]
    assert "nvidia.com/gpu" not in cpu["containers"][0]["resources"]["limits"]
    assert "nodeSelector" not in cpu and "tolerations" not in cpu


def test_pools_advertise_their_ray_resource_and_the_head_runs_no_replicas(rendered: dict[str, list[hc.Obj]]) -> None:
    spec = hc.one(rendered["gpu"], "RayCluster")["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]["rayStartParams"]
    assert head["num-cpus"] == "0" and head["dashboard-host"] == "0.0.0.0"
    for group in spec["workerGroupSpecs"]:
        value = group["rayStartParams"]["resources"]
        # KubeRay pastes "--resources=<value>" into a bash command line: split it the same way.
        [flag] = shlex.split(f"--resources={value}")
        assert json.loads(flag.removeprefix("--resources=")) == {f"pool-{group['groupName']}": 10000}
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["template"]["metadata"]["labels"]["quiver.dev/pool"] == group["groupName"]


def test_the_head_keeps_the_gcs_on_a_claim_and_ray_processes_wait_for_it(rendered: dict[str, list[hc.Obj]], tmp_path: Path) -> None:
    """A lost head pod comes back with the cluster's state (tests/test_head_loss.py plays it out)."""
    objects = rendered["everything"]
    head = hc.one(objects, "RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]
    container = next(c for c in head["containers"] if c["name"] == "ray-head")
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RAY_gcs_storage"] == "rocksdb"
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == env["RAY_gcs_storage_path"]]
    [volume] = [v for v in head["volumes"] if v["name"] == mount["name"]]
    claim = hc.one(objects, "PersistentVolumeClaim", "-ray-gcs")
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    waiting = set()
    for _, _, spec in hc.pod_templates(objects):
        for each in hc.containers(spec):
            if {"name": "RAY_gcs_rpc_server_reconnect_timeout_s", "value": "600"} in each.get("env", []):
                waiting.add(each["name"])
    assert {"ray-head", "ray-worker", "router"} <= waiting
    ephemeral = render_with({"ray": {"head": {"gcsStorage": {"persistent": False}}}}, tmp_path)
    assert not [o for o in hc.by_kind(ephemeral, "PersistentVolumeClaim") if o["metadata"]["name"].endswith("-ray-gcs")]
    head = hc.one(ephemeral, "RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]
    assert "RAY_gcs_storage" not in {e["name"] for e in head["containers"][0]["env"]}


def test_rbac_is_namespaced_and_grants_no_wildcards(rendered: dict[str, list[hc.Obj]]) -> None:
    objects = rendered["everything"]
    assert not hc.by_kind(objects, "ClusterRole") and not hc.by_kind(objects, "ClusterRoleBinding")
    role = hc.one(objects, "Role", "-operator")
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
        assert "resourceNames" not in rule or rule["resourceNames"]
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    assert ("serving.quiver.dev", "modeldeployments/status", "patch") in granted
    assert ("batch", "jobs", "create") in granted and ("", "configmaps", "patch") in granted
    assert not any(r == "secrets" for _, r, _ in granted)
    binding = hc.one(objects, "RoleBinding", "-operator")
    operator = hc.one(objects, "Deployment", "-operator")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": operator["spec"]["template"]["spec"]["serviceAccountName"], "namespace": "quiver"}
    ]


def test_every_object_and_pod_carries_the_recommended_labels(rendered: dict[str, list[hc.Obj]]) -> None:
    required = {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                "app.kubernetes.io/managed-by", "app.kubernetes.io/component", "app.kubernetes.io/part-of", "helm.sh/chart"}
    for setup in ("everything", "plaintext"):
        for obj in rendered[setup]:
            assert required <= obj["metadata"]["labels"].keys(), f"{obj['kind']}/{obj['metadata']['name']}"
        for where, metadata, _ in hc.pod_templates(rendered[setup]):
            assert required <= metadata["labels"].keys(), where


# --- the components find each other ------------------------------------------------------------


def _args(deployment: hc.Obj) -> dict[str, str]:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    flags = {}
    for arg in container["args"][1:]:
        key, _, value = arg.partition("=")
        flags[key] = value
    return flags


def _mounts(deployment: hc.Obj) -> dict[str, hc.Obj]:
    """{mountPath: volume} of a deployment's single container."""
    spec = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    [container] = spec["containers"]
    return {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}


def _mounted(mounts: dict[str, hc.Obj], path: str) -> hc.Obj:
    directory = str(Path(path).parent)
    assert directory in mounts, f"{path}: {directory} is not mounted"
    return mounts[directory]


def test_operator_flags_name_what_the_chart_renders(rendered: dict[str, list[hc.Obj]]) -> None:
    objects = rendered["default"]
    operator = hc.one(objects, "Deployment", "-operator")
    flags = _args(operator)
    assert operator["spec"]["replicas"] == 1 and operator["spec"]["strategy"]["type"] == "Recreate"
    assert flags["--namespace"] == "$(POD_NAMESPACE)"
    assert flags["--store"] == "/models" and "/models" in _mounts(operator)
    assert flags["--store-claim"] == hc.one(objects, "PersistentVolumeClaim", "-models")["metadata"]["name"] == "quiver-models"
    routes = hc.one(objects, "ConfigMap", "-routes")
    assert flags["--routes-configmap"] == routes["metadata"]["name"] == "quiver-routes"
    assert json.loads(routes["data"]["routes.json"]) == {"models": {}}
    cluster = hc.one(objects, "RayCluster")
    assert flags["--ray-dashboard"] == f"http://{cluster['metadata']['name']}-head-svc:8265"
    [container] = operator["spec"]["template"]["spec"]["containers"]
    assert flags["--image"] == container["image"] == cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    router = hc.one(objects, "Deployment", "-router")
    selector = dict(pair.split("=") for pair in flags["--router-selector"].split(","))
    assert selector.items() <= router["spec"]["template"]["metadata"]["labels"].items()
    assert selector["app.kubernetes.io/instance"] == "quiver" and selector["app.kubernetes.io/component"] == "router"
    assert flags["--router-metrics-port"] == "8002"
    assert flags["--job-service-account"] == hc.one(objects, "ServiceAccount", "-optimize")["metadata"]["name"]
    assert flags["--liveness"] == "http://0.0.0.0:8080/healthz"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {"name": "health", "containerPort": 8080} in container["ports"]


def test_router_flags_point_into_its_mounts(rendered: dict[str, list[hc.Obj]]) -> None:
    objects = rendered["everything"]
    router = hc.one(objects, "Deployment", "-router")
    flags, mounts = _args(router), _mounts(router)
    assert flags["--ray-address"] == f"{hc.one(objects, 'RayCluster')['metadata']['name']}-head-svc:6379"
    assert "--join" in flags  # the router pod becomes a CPU-less Ray node itself
    assert flags["--host"] == "0.0.0.0" and flags["--port"] == "8001" and flags["--metrics-port"] == "8002"
    assert flags["--http-port"] == "8000"
    assert "--insecure" not in flags
    assert _mounted(mounts, flags["--routes"])["configMap"]["name"] == hc.one(objects, "ConfigMap", "-routes")["metadata"]["name"]
    tls = _mounted(mounts, flags["--tls-cert"])["projected"]["sources"]
    assert flags["--tls-key"] == "/etc/quiver/tls/tls.key" and flags["--tls-client-ca"] == "/etc/quiver/tls/ca.crt"
    assert tls[0]["secret"]["name"] == "quiver-router-tls" and tls[1]["secret"] == {
        "name": "client-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]}
    assert _mounted(mounts, flags["--token-file"])["secret"] == {
        "secretName": "quiver-router-tokens", "items": [{"key": "tokens", "path": "tokens"}]}
    assert mounts["/models"]["persistentVolumeClaim"]["claimName"] == "shared-models"
    # Routes must reach the running router when the operator patches them: no subPath.
    [container] = router["spec"]["template"]["spec"]["containers"]
    assert all("subPath" not in m for m in container["volumeMounts"])


def test_model_keys_reach_the_replicas_and_the_operator_names_their_paths(rendered: dict[str, list[hc.Obj]]) -> None:
    objects = rendered["everything"]
    flags = _args(hc.one(objects, "Deployment", "-operator"))
    assert flags["--model-key"] == "/etc/quiver/model-key/key"
    assert flags["--verify-key"] == "/etc/quiver/verify-key/key.pub"
    assert flags["--pools"] == "cpu,gpu"
    ray_pods = [(where, spec) for where, _, spec in hc.pod_templates(objects) if where.startswith("RayCluster")]
    assert len(ray_pods) == 3
    for where, spec in ray_pods:
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in spec["containers"][0]["volumeMounts"]}
        assert _mounted(mounts, flags["--model-key"])["secret"] == {
            "secretName": "model-key", "items": [{"key": "key", "path": "key"}]}, where
        assert _mounted(mounts, flags["--verify-key"])["secret"]["secretName"] == "verify-key", where
    # The operator checks signatures but never decrypts; the router does neither.
    operator_mounts = _mounts(hc.one(objects, "Deployment", "-operator"))
    assert "/etc/quiver/verify-key" in operator_mounts and "/etc/quiver/model-key" not in operator_mounts
    assert not {"/etc/quiver/verify-key", "/etc/quiver/model-key"} & _mounts(hc.one(objects, "Deployment", "-router")).keys()
    default_flags = _args(hc.one(rendered["default"], "Deployment", "-operator"))
    assert "--model-key" not in default_flags and "--verify-key" not in default_flags


def test_capture_is_off_by_default_and_when_on_writes_to_the_store_with_the_model_key(
    rendered: dict[str, list[hc.Obj]], tmp_path: Path
) -> None:
    assert not {"--capture", "--model-key"} & _args(hc.one(rendered["everything"], "Deployment", "-router")).keys()
    values = {**EVERYTHING, "router": {**EVERYTHING["router"], "capture": {"enabled": True, "rate": 0.05, "maxMB": 64}}}
    router = hc.one(render_with(values, tmp_path), "Deployment", "-router")
    flags, mounts = _args(router), _mounts(router)
    assert (flags["--capture"], flags["--capture-rate"], flags["--capture-max-mb"]) == ("/models/_capture", "0.05", "64")
    assert mounts["/models"]["persistentVolumeClaim"]["claimName"] == "shared-models"  # where quiver optimize Jobs read it
    assert _mounted(mounts, flags["--model-key"])["secret"] == {"secretName": "model-key", "items": [{"key": "key", "path": "key"}]}


def test_ray_token_auth_reaches_the_router_and_the_operator(rendered: dict[str, list[hc.Obj]]) -> None:
    objects = rendered["default"]
    cluster = hc.one(objects, "RayCluster")
    assert cluster["spec"]["authOptions"] == {"mode": "token"}
    token = {"secretKeyRef": {"name": cluster["metadata"]["name"], "key": "auth_token"}}  # KubeRay's Secret
    for suffix in ("-router", "-operator"):
        [container] = hc.one(objects, "Deployment", suffix)["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token", suffix
        assert env["RAY_AUTH_TOKEN"]["valueFrom"] == token, suffix
    plain = rendered["plaintext"]
    assert "authOptions" not in hc.one(plain, "RayCluster")["spec"]
    [router] = hc.one(plain, "Deployment", "-router")["spec"]["template"]["spec"]["containers"]
    assert "RAY_AUTH_TOKEN" not in {e["name"] for e in router["env"]}


def test_router_service_and_probes(rendered: dict[str, list[hc.Obj]]) -> None:
    service = hc.one(rendered["default"], "Service", "-router")
    assert {(p["name"], p["port"]) for p in service["spec"]["ports"]} == {("grpc", 8001), ("http", 8000), ("metrics", 8002)}
    router = hc.one(rendered["default"], "Deployment", "-router")
    assert service["spec"]["selector"].items() <= router["spec"]["template"]["metadata"]["labels"].items()
    [secure] = router["spec"]["template"]["spec"]["containers"]
    # TLS (the default): the kubelet's gRPC probe cannot do TLS, so the chart's script does.
    command = secure["readinessProbe"]["exec"]["command"]
    assert command[:4] == ["python", "/etc/quiver/health/router_health.py", "127.0.0.1:8001", "--ready"]
    assert "--tls-cert" in command and "--alive" in secure["livenessProbe"]["exec"]["command"]
    [plain] = hc.one(rendered["plaintext"], "Deployment", "-router")["spec"]["template"]["spec"]["containers"]
    assert plain["readinessProbe"]["grpc"] == {"port": 8001} and plain["livenessProbe"]["grpc"] == {"port": 8001}
    assert "--insecure" in plain["args"] and not any(a.startswith(("--tls", "--token")) for a in plain["args"])
    hpa = hc.one(rendered["default"], "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == router["metadata"]["name"] and "replicas" not in router["spec"]
    pdb = hc.one(rendered["default"], "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= router["spec"]["template"]["metadata"]["labels"].items()


def test_helm_test_pod_checks_the_router_over_tls(rendered: dict[str, list[hc.Obj]]) -> None:
    pod = hc.one(rendered["everything"], "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    [container] = pod["spec"]["containers"]
    assert container["command"][:4] == ["python", "/etc/quiver/health/router_health.py", "quiver-router:8001", "--ready"]
    assert "--client-cert" in container["command"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    # The test pod gets the router's certificate, never its key.
    assert volumes["tls"]["secret"]["items"] == [{"key": "tls.crt", "path": "tls.crt"}]
    assert volumes["probe-client"]["secret"]["secretName"] == "probe-client"


def test_network_policies_admit_only_what_is_needed(rendered: dict[str, list[hc.Obj]]) -> None:
    policies = {p["metadata"]["name"]: p["spec"] for p in hc.by_kind(rendered["everything"], "NetworkPolicy")}
    router, ray, operator = policies["quiver-router"], policies["quiver-ray"], policies["quiver-operator"]
    grpc_rule = router["ingress"][0]
    assert grpc_rule["ports"] == [{"port": "grpc", "protocol": "TCP"}, {"port": "http", "protocol": "TCP"}]
    assert {"quiver.dev/client": "true"} in [p.get("podSelector", {}).get("matchLabels") for p in grpc_rule["from"]]
    # Serve replicas (Ray pods) take traffic from Ray nodes, the router among them, and only
    # the dashboard port from the operator.
    ray_peers = ray["ingress"][0]["from"][0]["podSelector"]["matchExpressions"][0]
    assert ray_peers["values"] == ["ray-head", "ray-worker", "router"] and "ports" not in ray["ingress"][0]
    assert ray["ingress"][1]["ports"] == [{"port": 8265, "protocol": "TCP"}]
    assert operator["ingress"] == [] and operator["policyTypes"] == ["Ingress"]


# --- the health check script the probes and `helm test` run ----------------------------------


@pytest.fixture(scope="module")
def health_server(tmp_path_factory: pytest.TempPathFactory):
    """A grpc.health.v1 server over mTLS-optional TLS, plus a plaintext one, in this process."""
    from concurrent import futures

    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    directory = tmp_path_factory.mktemp("certs")
    servers_ca, clients_ca = Authority(directory, "servers"), Authority(directory, "clients")
    server_pem, client_pem = servers_ca.issue("router", server=True), clients_ca.issue("probe", server=False)
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    key_pair = [(server_pem.key.read_bytes(), server_pem.cert.read_bytes())]
    ports = {
        "plain": server.add_insecure_port("127.0.0.1:0"),
        "tls": server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials(key_pair)),
        "mtls": server.add_secure_port(
            "127.0.0.1:0",
            grpc.ssl_server_credentials(key_pair, root_certificates=clients_ca.pem.read_bytes(), require_client_auth=True),
        ),
    }
    server.start()
    yield ports, servicer, server_pem, client_pem
    server.stop(0)


def _check(*args: str) -> subprocess.CompletedProcess[str]:
    script = hc.CHART / "files" / "router_health.py"
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=30)


def test_health_script_over_plaintext_tls_and_mtls(health_server) -> None:
    ports, _, server_pem, client_pem = health_server
    assert _check(f"127.0.0.1:{ports['plain']}", "--ready").returncode == 0
    # TLS: the router's own certificate (signed by a CA the probe never sees) is the anchor.
    tls = _check(f"127.0.0.1:{ports['tls']}", "--ready", "--tls-cert", str(server_pem.cert))
    assert tls.returncode == 0, tls.stderr
    assert "SERVING" in tls.stdout
    client = ["--client-cert", str(client_pem.cert), "--client-key", str(client_pem.key)]
    mtls = _check(f"127.0.0.1:{ports['mtls']}", "--ready", "--tls-cert", str(server_pem.cert), *client)
    assert mtls.returncode == 0, mtls.stderr
    refused = _check(f"127.0.0.1:{ports['mtls']}", "--ready", "--tls-cert", str(server_pem.cert), "--timeout", "2")
    assert refused.returncode == 1 and "UNAVAILABLE" in refused.stderr
    # Plaintext against a TLS port fails rather than hangs.
    assert _check(f"127.0.0.1:{ports['tls']}", "--ready", "--timeout", "2").returncode == 1


def test_health_script_ready_versus_alive(health_server) -> None:
    from grpc_health.v1 import health_pb2

    ports, servicer, server_pem, _ = health_server
    address, tls = f"127.0.0.1:{ports['tls']}", ["--tls-cert", str(server_pem.cert)]
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        # A draining router is not ready, but it is alive: liveness must not kill it.
        not_ready = _check(address, "--ready", *tls)
        assert not_ready.returncode == 1 and "NOT_SERVING" in not_ready.stderr
        assert _check(address, "--alive", *tls).returncode == 0
    finally:
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert _check("127.0.0.1:1", "--alive", "--timeout", "1").returncode == 1
