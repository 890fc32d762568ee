"""One look of the operator at a time, against fakes of the outside world (the Kubernetes API
and the Serve REST API, with the interfaces of operator/kube.py and operator/serve_api.py), over
a real model store: what it does when a Job fails, when a spec asks for a variant that was not
published, when a version is not signed as required. The whole loop against the real parts is
tests/test_operator.py; these are the refusals, fast."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from quiver.operator.kube import JobPhase, JobState
from quiver.operator.rollout import Reconciler
from quiver.operator.settings import OperatorSettings
from quiver.operator.spec import parse_spec
from quiver.operator.status import ConditionType, Phase, Status
from quiver.serving import ServingSettings, build_example, from_onnx_file, read_version, signing, write_version

from .test_model_security import signing_keys


class FakeKube:
    def __init__(self, job: JobState) -> None:
        self.job, self.jobs, self.routes = job, [], {"models": {}}

    def create_job(self, manifest: dict[str, Any]) -> None:
        self.jobs.append(manifest)

    def job_state(self, name: str) -> JobState:
        return self.job

    def edit_routes(self, configmap: str, edit: Any) -> None:
        self.routes = edit(self.routes)

    def pod_ips(self, selector: str) -> list[str]:
        return []


class FakeServe:
    def __init__(self) -> None:
        self.apps: dict[str, dict] = {}

    def statuses(self) -> dict[str, str]:
        return {name: "RUNNING" for name in self.apps}

    def messages(self) -> dict[str, str]:
        return {}

    def running_replicas(self) -> dict[str, int]:
        return {name: 1 for name in self.apps}

    def put_apps(self, apps: list[dict]) -> None:
        self.apps.update({app["name"]: app for app in apps})

    def remove_apps(self, prefix: str) -> None:
        self.apps = {name: app for name, app in self.apps.items() if not name.startswith(prefix)}


def spec(**placement: Any) -> Any:
    return parse_spec({
        "model": {"name": "digits", "version": "1", "source": "/in/digits.onnx"},
        "optimization": {"variants": ["fp32", "int8-dynamic"], "evalData": "/in/eval.npz"},
        "placement": [{"variant": "fp32", "pool": "cpu"} | placement],
    })


def publish(store: Path, sign_key: Path | None = None) -> Path:
    directory = store / "digits" / "1"
    model = build_example(directory / "model.onnx")
    write_version(store, from_onnx_file(model, name="digits").manifest)
    if sign_key:
        signing.sign(directory, sign_key)
    return directory


def looks(reconciler: Reconciler, times: int = 3) -> Status:
    status = Status()
    for _ in range(times):
        status = reconciler.look("digits", "uid-1", spec(), status)
    return status


def reasons(status: Status) -> dict[str, tuple[str, str, str]]:
    return {c.type.value: (c.status, c.reason, c.message) for c in status.conditions}


def test_a_failed_job_is_reported_and_nothing_is_deployed(tmp_path: Path) -> None:
    kube, serve = FakeKube(JobState(JobPhase.FAILED, "BackoffLimitExceeded", "exit 2")), FakeServe()
    status = looks(Reconciler(OperatorSettings("test", tmp_path, "img", "http://ray"), kube, serve))
    assert status.phase is Phase.FAILED and status.failed_version == "1"
    assert reasons(status)["Optimized"] == ("False", "JobFailed", "job digits-optimize-1: BackoffLimitExceeded: exit 2")
    assert reasons(status)["Degraded"][:2] == ("True", "OptimizationFailed")
    assert len(kube.jobs) == 1 and not serve.apps  # one Job, however many looks


def test_the_job_runs_what_the_spec_asks_for_with_the_keys_mounted(tmp_path: Path) -> None:
    kube = FakeKube(JobState(JobPhase.RUNNING))
    settings = OperatorSettings("test", tmp_path, "img:1", "http://ray", store_claim="models", sign_key_secret="signer")
    looks(Reconciler(settings, kube, FakeServe()), times=1)
    pod = kube.jobs[0]["spec"]["template"]["spec"]
    command = pod["containers"][0]["command"]
    assert command[:3] == ["quiver", "optimize", "/in/digits.onnx"] and "--sign-key" in command
    assert {"name": "sign-key", "secret": {"secretName": "signer", "defaultMode": 0o400}} in pod["volumes"]
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert kube.jobs[0]["metadata"]["ownerReferences"][0]["uid"] == "uid-1"


def test_a_placement_of_a_variant_that_was_not_published_deploys_nothing(tmp_path: Path) -> None:
    publish(tmp_path)  # fp32 only: int8-dynamic did not make it
    kube, serve = FakeKube(JobState(JobPhase.SUCCEEDED)), FakeServe()
    reconciler = Reconciler(OperatorSettings("test", tmp_path, "img", "http://ray"), kube, serve)
    status = reconciler.look("digits", None, spec(variant="int8-dynamic"), Status())
    status = reconciler.look("digits", None, spec(variant="int8-dynamic"), status)
    condition = reasons(status)["Deployed"]
    assert condition[:2] == ("False", "NotDeployable")
    assert "spec.placement[0].variant 'int8-dynamic' was not published" in condition[2]
    assert not serve.apps and kube.routes == {"models": {}}


@pytest.mark.parametrize("signed_by", ["nobody", "another key", "the trusted key"])
def test_only_versions_signed_by_a_trusted_key_deploy(tmp_path: Path, signed_by: str) -> None:
    private, public = signing_keys(tmp_path, "trusted")
    other, _ = signing_keys(tmp_path, "other")
    publish(tmp_path / "store", {"nobody": None, "another key": other, "the trusted key": private}[signed_by])
    kube, serve = FakeKube(JobState(JobPhase.SUCCEEDED)), FakeServe()
    settings = OperatorSettings("test", tmp_path / "store", "img", "http://ray", verify_keys=(public,))
    status = looks(Reconciler(settings, kube, serve))
    if signed_by == "the trusted key":
        assert status.phase is Phase.SERVING and status.current_version == "1"
        assert serve.apps["digits.1.fp32"]["args"]["verify_keys"] == [str(public)]  # checked again where it loads
        assert kube.routes["models"] == {"digits": {"1": 100}}
        assert status.variants[0]["replicas"] == 1 and status.variants[0]["pool"] == "cpu"
    else:
        deployed = reasons(status)["Deployed"]
        assert deployed[:2] == ("False", "NotDeployable")
        assert ("not signed" if signed_by == "nobody" else "signature not verified") in deployed[2]
        assert not serve.apps and status.condition(ConditionType.READY).status == "False"


def test_a_tuned_version_deploys_with_its_tuned_settings_where_the_placement_sets_none(tmp_path: Path) -> None:
    directory = publish(tmp_path)
    manifest = read_version(directory).manifest
    tuned = ServingSettings(intra_op_threads=2, max_batch_size=16, max_wait_ms=1.0, replicas=2, cpus_per_replica=1.0)
    write_version(tmp_path, manifest.model_copy(update={"variants": [tuned.apply(v) for v in manifest.variants]}))
    kube, serve = FakeKube(JobState(JobPhase.SUCCEEDED)), FakeServe()
    reconciler = Reconciler(OperatorSettings("test", tmp_path, "img", "http://ray"), kube, serve)
    status = Status()
    for _ in range(3):  # the placement sets the wait only: the rest is the manifest's
        status = reconciler.look("digits", None, spec(batching={"maxWaitMs": 0}), status)
    assert status.phase is Phase.SERVING
    placed = serve.apps["digits.1.fp32"]["args"]["placement"]
    assert placed["batching"] == {"max_batch_size": 16}  # max_wait_ms 0 is the default, left out of the args
    assert placed["threads"] == {"intra_op": 2} and placed["replicas"]["count"] == 2
    routed = kube.routes["placement"]["digits"]["1"]["fp32"]
    assert routed["batching"] == {"max_batch_size": 16, "max_wait_ms": 0.0} and routed["threads"]["intra_op"] == 2
