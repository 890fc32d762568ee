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
from quiver.serving import Profile, ServingSettings, build_example, from_onnx_file, read_version, signing, write_version
from quiver.serving.tune import record

from .test_model_security import signing_keys


class FakeKube:
    def __init__(self, job: JobState) -> None:
        self.job, self.jobs, self.routes, self.deleted = job, [], {"models": {}}, []

    def create_job(self, manifest: dict[str, Any]) -> None:
        self.jobs.append(manifest)

    def delete_job(self, name: str) -> None:
        self.deleted.append(name)

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


class JobsKube(FakeKube):
    """Each Job's state by its component (optimize, tune): what a real API server's Jobs would report."""

    def __init__(self, **states: JobState) -> None:
        super().__init__(JobState(JobPhase.RUNNING))
        self.states = states

    def job_state(self, name: str) -> JobState:
        return next((state for part, state in self.states.items() if f"-{part}-" in name), JobState(JobPhase.MISSING))


TUNING = {"sloP99Ms": 50, "budgetSeconds": 30, "cpus": 2, "nodeSelector": {"quiver.dev/pool": "cpu"}}


def tuned_spec(version: str = "1") -> Any:
    body = spec().model_dump(mode="json", by_alias=True, exclude_none=True)
    body["model"]["version"], body["tuning"] = version, TUNING
    return parse_spec(body)


def tune_records(store: Path, meets_slo: bool) -> None:
    """What the tuning Job's `quiver tune` leaves in the store (its own tests: tests/test_tune.py)."""
    settings = ServingSettings(intra_op_threads=2, max_batch_size=8, max_wait_ms=1.0, replicas=1, cpus_per_replica=2.0)
    found = Profile(pool="cpu", settings=settings, objective="throughput", slo_p99_ms=50.0, meets_slo=meets_slo, concurrency=4,
                    p50_ms=3.0, p99_ms=9.0 if meets_slo else 70.0, throughput=1200.0, throughput_per_replica=1200.0)
    record(store, read_version(store / "digits" / "1"), {"fp32": found})


def test_tuning_runs_as_a_job_between_optimizing_and_deploying_with_the_tuned_settings(tmp_path: Path) -> None:
    kube, serve = JobsKube(optimize=JobState(JobPhase.RUNNING)), FakeServe()
    settings = OperatorSettings("test", tmp_path, "img:1", "http://ray", store_claim="models", sign_key_secret="signer")
    reconciler = Reconciler(settings, kube, serve)
    status = reconciler.look("digits", "uid-1", tuned_spec(), Status())
    assert status.phase is Phase.OPTIMIZING and len(kube.jobs) == 1
    publish(tmp_path)
    kube.states["optimize"], kube.states["tune"] = JobState(JobPhase.SUCCEEDED), JobState(JobPhase.RUNNING)
    for _ in range(2):  # the Job once, however many looks
        status = reconciler.look("digits", "uid-1", tuned_spec(), status)
    assert status.phase is Phase.TUNING and not serve.apps and len(kube.jobs) == 2
    assert reasons(status)["Tuned"] == ("Unknown", "JobRunning", "job digits-tune-1 tunes fp32")
    optimize, tune = (job["spec"]["template"]["spec"] for job in kube.jobs)
    assert kube.jobs[1]["metadata"]["name"] == "digits-tune-1" and kube.jobs[1]["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert tune["containers"][0]["command"] == [
        "quiver", "tune", str(tmp_path), "--model", "digits", "--version", "1", "--variants", "fp32", "--objective", "throughput",
        "--budget-s", "30", "--slo-p99-ms", "50", "--cpus", "2", "--sign-key", "/etc/quiver/sign-key/key.pem",
    ]
    for same in ("securityContext", "serviceAccountName"):  # as the optimization Job runs
        assert tune.get(same) == optimize.get(same)
    assert tune["containers"][0]["image"] == "img:1"
    assert tune["containers"][0]["securityContext"] == optimize["containers"][0]["securityContext"]
    assert all(volume in tune["volumes"] for volume in optimize["volumes"])  # the store's claim and the signing key
    assert tune["containers"][0]["resources"]["limits"] == {"cpu": "2"} and tune["nodeSelector"] == {"quiver.dev/pool": "cpu"}
    tune_records(tmp_path, meets_slo=True)
    kube.states["tune"] = JobState(JobPhase.SUCCEEDED)
    status = reconciler.look("digits", "uid-1", tuned_spec(), status)
    assert status.phase is Phase.SERVING and status.current_version == "1"
    assert reasons(status)["Tuned"][:2] == ("True", "Tuned") and "fp32: 1200 rows/s at p99 9.0 ms" in reasons(status)["Tuned"][2]
    placed = serve.apps["digits.1.fp32"]["args"]["placement"]
    assert placed["batching"] == {"max_batch_size": 8, "max_wait_ms": 1.0} and placed["threads"] == {"intra_op": 2}


def test_a_store_unreadable_when_the_route_is_written_waits_for_it(tmp_path: Path) -> None:
    kube, serve = FakeKube(JobState(JobPhase.SUCCEEDED)), FakeServe()
    serve.apps["digits.1.fp32"] = {"name": "digits.1.fp32"}
    reconciler = Reconciler(OperatorSettings("test", tmp_path, "img", "http://ray"), kube, serve)
    deploying = Status(phase=Phase.DEPLOYING, target_version="1", deploy_started_at=0.0)
    status = reconciler.look("digits", None, spec(), deploying)  # the placement's manifest is gone from the store
    assert status.phase is Phase.DEPLOYING and status.current_version is None and kube.routes == {"models": {}}
    assert reasons(status)["RolloutProgressing"][:2] == ("True", "WaitingForStore")
    publish(tmp_path)
    status = reconciler.look("digits", None, spec(), status)
    assert status.phase is Phase.SERVING and kube.routes["models"] == {"digits": {"1": 100}}


def test_a_version_abandoned_while_tuning_has_its_tune_job_deleted(tmp_path: Path) -> None:
    publish(tmp_path)
    kube = JobsKube(optimize=JobState(JobPhase.SUCCEEDED), tune=JobState(JobPhase.RUNNING))
    reconciler = Reconciler(OperatorSettings("test", tmp_path, "img", "http://ray"), kube, FakeServe())
    status = reconciler.look("digits", None, tuned_spec(), Status())
    status = reconciler.look("digits", None, tuned_spec(), status)
    assert status.phase is Phase.TUNING and kube.deleted == []
    status = reconciler.look("digits", None, tuned_spec("2"), status)
    assert kube.deleted == ["digits-tune-1"] and "digits-optimize-2" in [job["metadata"]["name"] for job in kube.jobs]


def test_a_failed_tuning_job_fails_the_version_and_the_serving_one_keeps_serving(tmp_path: Path) -> None:
    publish(tmp_path)
    tune_records(tmp_path, meets_slo=False)  # quiver tune exits 1: no setting met the SLO
    kube = JobsKube(optimize=JobState(JobPhase.SUCCEEDED), tune=JobState(JobPhase.FAILED, "BackoffLimitExceeded", "exit 1"))
    kube.routes = {"models": {"digits": {"0": 100}}}
    serve = FakeServe()
    serve.apps["digits.0.fp32"] = {"name": "digits.0.fp32"}
    serving = Status(phase=Phase.SERVING, current_version="0", traffic={"0": 100})
    reconciler = Reconciler(OperatorSettings("test", tmp_path, "img", "http://ray"), kube, serve)
    status = serving
    for _ in range(3):
        status = reconciler.look("digits", None, tuned_spec(), status)
    assert status.phase is Phase.FAILED and status.failed_version == "1" and status.current_version == "0"
    tuned, degraded = reasons(status)["Tuned"], reasons(status)["Degraded"]
    assert tuned[:2] == ("False", "JobFailed") and degraded[:2] == ("True", "TuningFailed")
    assert tuned[2] == ("job digits-tune-1: BackoffLimitExceeded: exit 1; no setting meets the SLO for "
                        "fp32 (p99 ≤ 50 ms asked, 70.0 ms at best)")
    assert list(serve.apps) == ["digits.0.fp32"] and kube.routes["models"] == {"digits": {"0": 100}}
    assert [job["metadata"]["name"] for job in kube.jobs] == ["digits-optimize-1", "digits-tune-1"]  # however many looks
