"""The operator's Jobs, in the chart's image, writing into the shared store: `quiver optimize`
makes a version's variants; `quiver tune` (spec.tuning) then measures and records their serving
settings. Both run with the same volumes, keys and security context."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from .settings import OperatorSettings
from .spec import ModelDeploymentSpec, ModelSource, Tuning, local_path

MANAGED_BY = "quiver-operator"
SECRETS = "/etc/quiver"  # where a Job mounts the keys it needs


def job_name(deployment: str, version: str, component: str = "optimize") -> str:
    """A DNS-1123 name, unique per (ModelDeployment, version, component)."""
    safe = re.sub(r"[^a-z0-9-]", "-", version.lower()).strip("-") or "v"
    name = f"{deployment}-{component}-{safe}"
    if len(name) <= 63:
        return name
    # Cut, the component could be lost (optimize and tune the same name): a hash of the whole keeps them apart.
    return f"{name[:54].rstrip('-')}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def optimize_command(spec: ModelDeploymentSpec, settings: OperatorSettings) -> list[str]:
    model, optimization = spec.model, spec.optimization
    command = [
        "quiver", "optimize", str(local_path(model.source)),
        "--name", model.name,
        "--version", model.version,
        "--store", str(settings.store),
        "--eval", str(local_path(optimization.eval_data)),
        "--variants", ",".join(kind.value for kind in optimization.variants),
        "--max-accuracy-drop", str(optimization.max_accuracy_drop),
        "--gate", optimization.gate,
        "--metric", optimization.metric,
        "--target", optimization.target,
    ]
    if model.sha256:
        command += ["--expect-sha256", model.sha256]
    if optimization.calibration_data:
        command += ["--calibration", str(local_path(optimization.calibration_data))]
    if optimization.train_data:
        command += ["--train", str(local_path(optimization.train_data))]
    if settings.encrypt_key_secret:
        command += ["--encrypt-key", f"{SECRETS}/encrypt-key/key"]
    if settings.sign_key_secret:
        command += ["--sign-key", f"{SECRETS}/sign-key/key.pem"]
    return command


def tune_command(model: ModelSource, tuning: Tuning, variants: list[str], settings: OperatorSettings) -> list[str]:
    """`quiver tune` over `variants` (the published ones spec.tuning names), each given its budget."""
    command = [
        "quiver", "tune", str(settings.store),
        "--model", model.name,
        "--version", model.version,
        "--variants", ",".join(variants),
        "--objective", tuning.objective,
        "--budget-s", str(tuning.budget_seconds * len(variants)),
    ]
    if tuning.slo_p99_ms is not None:
        command += ["--slo-p99-ms", f"{tuning.slo_p99_ms:g}"]
    if tuning.cpus is not None:
        command += ["--cpus", str(tuning.cpus)]
    if settings.encrypt_key_secret:  # the variants it deploys are encrypted with it
        command += ["--model-key", f"{SECRETS}/encrypt-key/key"]
    if settings.sign_key_secret:  # a changed manifest is signed again
        command += ["--sign-key", f"{SECRETS}/sign-key/key.pem"]
    return command


def optimize_job(deployment: str, uid: str | None, spec: ModelDeploymentSpec, settings: OperatorSettings) -> dict[str, Any]:
    return _job(deployment, uid, "optimize", spec.model.version, optimize_command(spec, settings), settings)


def tune_job(
    deployment: str, uid: str | None, model: ModelSource, tuning: Tuning, variants: list[str], settings: OperatorSettings
) -> dict[str, Any]:
    job = _job(deployment, uid, "tune", model.version, tune_command(model, tuning, variants, settings), settings)
    pod = job["spec"]["template"]["spec"]
    # Ray's object store lives in /dev/shm; a container's default is 64 MiB.
    pod["volumes"].append({"name": "shm", "emptyDir": {"medium": "Memory"}})
    pod["containers"][0]["volumeMounts"].append({"name": "shm", "mountPath": "/dev/shm"})
    if tuning.cpus is not None:  # the CPUs it tunes for are the pod's own, not shared with others'
        cpus = str(tuning.cpus)
        pod["containers"][0]["resources"] = {"requests": {"cpu": cpus}, "limits": {"cpu": cpus}}
    if tuning.node_selector:  # on a node of the pool it tunes for
        pod["nodeSelector"] = dict(tuning.node_selector)
    return job


def _job(deployment: str, uid: str | None, component: str, version: str, command: list[str], settings: OperatorSettings) -> dict[str, Any]:
    labels = {
        "app.kubernetes.io/name": "quiver",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "serving.quiver.dev/model-deployment": deployment,
    }
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000},
        "containers": [
            {
                "name": component,
                "image": settings.image,
                "command": command,
                # The root filesystem is read-only, the image's home with it: what writes under
                # the home (Ray's auth token in ~/.ray for tune's own instance, matplotlib's
                # cache) writes to the emptyDir instead.
                "env": [{"name": "HOME", "value": "/tmp"}],
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            }
        ],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    if settings.store_claim:
        pod["volumes"].append({"name": "models", "persistentVolumeClaim": {"claimName": settings.store_claim}})
        pod["containers"][0]["volumeMounts"].append({"name": "models", "mountPath": str(settings.store)})
    for secret, mount in ((settings.encrypt_key_secret, "encrypt-key"), (settings.sign_key_secret, "sign-key")):
        if secret:
            pod["volumes"].append({"name": mount, "secret": {"secretName": secret, "defaultMode": 0o400}})
            pod["containers"][0]["volumeMounts"].append({"name": mount, "mountPath": f"{SECRETS}/{mount}", "readOnly": True})
    if settings.job_service_account:
        pod["serviceAccountName"] = settings.job_service_account
    metadata: dict[str, Any] = {"name": job_name(deployment, version, component), "labels": labels}
    if uid:  # deleting the ModelDeployment deletes its Jobs
        metadata["ownerReferences"] = [
            {"apiVersion": "serving.quiver.dev/v1alpha1", "kind": "ModelDeployment", "name": deployment, "uid": uid, "controller": True}
        ]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        # One try: a failure is a fact about the model, the data or the SLO, reported in the status.
        "spec": {"backoffLimit": 0, "template": {"metadata": {"labels": labels}, "spec": pod}},
    }
