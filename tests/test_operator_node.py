"""The optimization and tuning Jobs as real pods: the operator (real kopf, as the chart's
ServiceAccount) creates each Job, the controller-manager's Job controller its pod, the scheduler
puts it on the session's node, containerd and runc run `quiver optimize`, then `quiver tune`
(its own local Ray instance, measuring through a Serve replica) in it, and the operator reads
each Job's completion and deploys the tuned version to a real Ray head.

The Jobs' image is built here from the project's own files (tests/k8s/image.py): the files that
`quiver optimize` and `quiver tune` open on this machine, with every process they start (Ray's
gcs_server, raylet, agents and workers) — the interpreter, the venv's packages and binaries and
the checkout — at their own paths, so the code the pods run is the code under test. The store
is the chart's PersistentVolumeClaim, bound by the real PV controller to a hostPath volume.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from kubernetes import client

from quiver.operator.jobs import tune_command
from quiver.operator.settings import OperatorSettings
from quiver.operator.spec import ModelSource, parse_spec
from quiver.serving import read_version
from quiver.serving.store import MANIFEST_FILE
from tests.cluster import Operator, environment
from tests.helm_chart import one, render
from tests.k8s.control_plane import ControlPlane
from tests.k8s.image import save, traced_rootfs
from tests.k8s.node import Node
from tests.kubeapi import CRD_FILE, established, operator_identity
from tests.models import build_gemm
from tests.raycluster import ray_head

GROUP, VERSION, PLURAL = "serving.quiver.dev", "v1alpha1", "modeldeployments"
NAMESPACE = "node-test"
IMAGE = "quiver.local/quiver-jobs:test"
# A short search (one trial, then the profile per batch size) for one CPU: the pod's limit. The SLO
# is far above any latency here: the test is about where tuning runs, not what it finds.
TUNING = {"budgetSeconds": 20, "variants": ["fp32"], "sloP99Ms": 5000, "cpus": 1}


@dataclass
class Built:
    size: int
    seconds: float


def jobs_image(node: Node, store: Path, inputs: Path, work: Path) -> Built:
    """Trace `quiver optimize`, then `quiver tune` (the command the tuning Job runs, as jobs.py
    writes it) on inputs like the test's into a scratch store; save and load one image of what
    they and their children opened. PATH finds the venv's `quiver` as the Jobs' commands need."""
    started = time.monotonic()
    scratch = work / "trace-store"
    quiver = str(Path(sys.executable).parent / "quiver")
    optimize = [quiver, "optimize", str(inputs / "digits-0.onnx"), "--name", "digits", "--version", "0", "--store", str(scratch),
                "--eval", str(inputs / "eval.npz"), "--variants", "fp32"]
    settings = OperatorSettings(namespace=NAMESPACE, store=scratch, image=IMAGE, ray_dashboard="")
    tune = tune_command(ModelSource(name="digits", version="0", source=str(inputs / "digits-0.onnx")),
                        parse_spec(deployment_spec(inputs)).tuning, TUNING["variants"], settings)
    build_gemm(inputs / "digits-0.onnx", np.zeros((64, 10), np.float32))
    # The image sets no home, as the chart's image gives none that is writable (its root filesystem is
    # read-only): the Jobs' own environment must. The trace runs with an empty one, so what a first
    # run in the pod reads (matplotlib, for one, builds its font list from the fonts it finds) is what it sees.
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin"}
    home = work / "home"
    home.mkdir()
    files = {}
    for name, command in (("optimize", optimize), ("tune", [quiver, *tune[1:]])):
        traced = traced_rootfs(command, work / f"{name}.strace", {**env, "HOME": str(home)})
        files |= {str(path): path for path in traced
                  if not path.is_relative_to(store) and not path.is_relative_to(scratch) and not path.is_relative_to(home)}
    size = save(files, IMAGE, work / "jobs.tar", env)
    node.load_image(work / "jobs.tar")
    return Built(size, time.monotonic() - started)


def deployment_spec(inputs: Path) -> dict:
    """The ModelDeployment's spec: version 1 of digits, optimized to fp32, tuned, deployed."""
    return {
        "model": {"name": "digits", "version": "1", "source": f"file://{inputs / 'digits-1.onnx'}"},
        "optimization": {"variants": ["fp32"], "evalData": str(inputs / "eval.npz"), "maxAccuracyDrop": 0.05},
        "tuning": TUNING,
        # No CPUs, batching or threads given: the deployed replicas take the manifest's, which the tuning Job set.
        "placement": [{"variant": "fp32", "pool": "cpu", "minReplicas": 1, "maxReplicas": 1}],
    }


def store_claim(api: client.ApiClient, claim: str, store: Path) -> None:
    """The chart's claim, bound to a hostPath volume on the store (what a cluster's storage would provide)."""
    core = client.CoreV1Api(api)
    volume = f"{NAMESPACE}-{claim}"
    core.create_persistent_volume({
        "metadata": {"name": volume},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                 "hostPath": {"path": str(store), "type": "Directory"},
                 "claimRef": {"namespace": NAMESPACE, "name": claim}},
    })
    core.create_namespaced_persistent_volume_claim(NAMESPACE, {
        "metadata": {"name": claim},
        "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": volume,
                 "resources": {"requests": {"storage": "1Gi"}}},
    })


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("operator-node")


def test_the_optimization_and_tuning_jobs_run_as_pods_on_the_node_and_the_tuned_version_is_deployed(
    work: Path, control_plane: ControlPlane, node: Node
) -> None:
    if Path(sys.prefix).resolve().is_relative_to("/tmp"):
        # Not a missing feature: the Jobs' pods mount an emptyDir over /tmp (their root filesystem is
        # read-only), which would hide an image's venv traced from there.
        pytest.skip(f"the venv ({sys.prefix}) is under /tmp, which the Jobs' pods mount an emptyDir over")
    store = work / "store"
    inputs = store / "inputs"  # the spec's files sit on the shared volume, as in a cluster
    inputs.mkdir(parents=True)
    store.chmod(0o777)  # the Jobs run as uid 1000 (the chart's securityContext); hostPath keeps the host's modes
    np.savez(inputs / "eval.npz", x=np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32))
    built = jobs_image(node, store, inputs, work)
    print(f"image {IMAGE}: {built.size / 1e6:.0f} MB layer, traced and loaded in {built.seconds:.1f} s")

    api = control_plane.api()
    established(api, CRD_FILE)
    control_plane.namespace(NAMESPACE)
    # The operator's settings as the chart renders them for these values: the Jobs' image and claim.
    repository, tag = IMAGE.rsplit(":", 1)
    deployment = one(render(["--set", f"image.repository={repository}", "--set", f"image.tag={tag}"],
                            namespace=NAMESPACE), "Deployment", "-operator")
    chart_args = [a for a in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
                  if a.startswith(("--image=", "--store-claim="))]
    assert f"--image={IMAGE}" in chart_args
    store_claim(api, next(a for a in chart_args if a.startswith("--store-claim=")).split("=", 1)[1], store)
    kubeconfig = operator_identity(control_plane, NAMESPACE, work)
    build_gemm(inputs / "digits-1.onnx", np.random.default_rng(1).standard_normal((64, 10)).astype(np.float32))
    custom, batch, core = client.CustomObjectsApi(api), client.BatchV1Api(api), client.CoreV1Api(api)
    with ray_head(num_cpus=2) as head:
        operator = Operator(["--namespace", NAMESPACE, "--store", str(store), *chart_args, "--ray-dashboard", head.dashboard_url,
                             "--pools", "cpu", "--tick-s", "0.5"],
                            environment({**head.env, "KUBECONFIG": str(kubeconfig)}), work / "operator.log")
        operator.start()
        try:
            started = time.monotonic()
            custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": "digits"},
                "spec": deployment_spec(inputs)})
            body = wait_status(custom, lambda s: s.get("currentVersion") == "1" or failed(s), operator, node, core, 400)
            elapsed = time.monotonic() - started
        finally:
            operator.stop()
        assert not failed(body["status"]), f"{body['status']}\n{node.pod_logs(NAMESPACE)}"
        for kind in ("Optimized", "Tuned", "Deployed"):
            assert condition(body, kind)["status"] == "True", body["status"]
        app = head.serve_applications()["digits.1.fp32"]
    assert app["status"] == "RUNNING"
    # Each Job succeeded because its pod ran to completion on the node, not because anyone said so.
    for job_name in ("digits-optimize-1", "digits-tune-1"):
        job = batch.read_namespaced_job(job_name, NAMESPACE)
        assert job.status.succeeded == 1 and job.spec.template.spec.containers[0].image == IMAGE
        [pod] = core.list_namespaced_pod(NAMESPACE, label_selector=f"job-name={job_name}").items
        assert pod.spec.node_name == node.name and pod.status.phase == "Succeeded"
        [state] = pod.status.container_statuses
        assert state.state.terminated.exit_code == 0 and state.container_id.startswith("containerd://")
    # What only `quiver tune` writes, written by uid 1000 in the tuning pod, through the claim: the
    # profile and the settings it chose in the manifest, and the report beside it.
    directory = store / "digits" / "1"
    assert (directory / MANIFEST_FILE).stat().st_uid == 1000 and (directory / "tune.png").stat().st_uid == 1000
    variant = read_version(directory).manifest.variant("fp32")
    tuned = variant.profile
    assert tuned is not None and tuned.pool == "cpu" and tuned.meets_slo and tuned.slo_p99_ms == TUNING["sloP99Ms"]
    assert tuned.throughput > 0 and [point.batch_size for point in tuned.latency][0] == 1
    assert tuned.settings.apply(variant) == variant  # the chosen settings are the variant's own now
    # The deployed replicas reserve what the tuning chose (the placement gives no CPUs or replicas).
    [deployed] = app["deployments"].values()
    config = deployed["deployment_config"]
    assert config["num_replicas"] == tuned.settings.replicas
    assert config["ray_actor_options"]["num_cpus"] == tuned.settings.cpus_per_replica
    print(f"ModelDeployment applied → version 1 optimized, tuned and deployed: {elapsed:.1f} s; "
          f"tuned {tuned.settings} ({tuned.throughput:.0f} rows/s at p99 {tuned.p99_ms:.1f} ms)")


def failed(status: dict) -> bool:
    return any(c["type"] == "Degraded" and c["status"] == "True" for c in status.get("conditions", []))


def condition(body: dict, kind: str) -> dict:
    return next((c for c in body.get("status", {}).get("conditions", []) if c["type"] == kind), {})


def wait_status(custom: client.CustomObjectsApi, check: Callable[[dict], bool], operator: Operator, node: Node, core: client.CoreV1Api,
                timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "digits")
        if check(body.get("status", {})):
            return body
        time.sleep(0.5)
    pods = [(p.metadata.name, p.status.phase, p.status.container_statuses) for p in core.list_namespaced_pod(NAMESPACE).items]
    raise AssertionError(f"timed out; status {body.get('status')}\npods {pods}\noperator log:\n{operator.log()[-5000:]}\n"
                         f"kubelet log:\n{node.log('kubelet')}")
