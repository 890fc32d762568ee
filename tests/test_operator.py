"""The operator end to end: the real kopf operator against a real Kubernetes API server (the
session's control plane, tests/k8s/control_plane.py), authenticated as the chart's ServiceAccount
and bound by the chart's Role; deploying to a real Ray head through its Serve REST API, a real
`quiver router` following the routes it writes, and a steady load of real gRPC requests through
that router all along.

What a node would do (run a Job's pod, mount a ConfigMap) is played by tests/cluster.py through
the same API; the Job controller and the garbage collector are the real ones. One module-scoped
stack; the tests build on each other in order: first version, a canary rollout, a rollback on a
breached gate, a rollback in the Shadow step of a version that disagrees with the serving one, an
operator killed mid-rollout, a copy that passes its Shadow step, specs the API server refuses, a
spec that cannot work, deletion.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton
from kubernetes import client, config
from prometheus_client.parser import text_string_to_metric_families

from quiver.operator.kube import ROUTES_KEY, Kube
from tests.cluster import NAMESPACE, JobRunner, Kubelet, Operator, environment, routes
from tests.k8s.control_plane import ControlPlane
from tests.kubeapi import CRD_FILE, established, operator_identity
from tests.models import build_gemm, reference
from tests.raycluster import RayHead, ray_head
from tests.serverproc import ServerProcess, quiver_process

GROUP, VERSION, PLURAL = "serving.quiver.dev", "v1alpha1", "modeldeployments"
MODEL = "digits"


def weights(version: int) -> np.ndarray:
    return np.random.default_rng(version).standard_normal((64, 10)).astype(np.float32)


@dataclass
class Load:
    """Requests without a version, one after another from a few threads, each outcome counted."""

    address: str
    outcomes: Counter = field(default_factory=Counter)  # "ok:<version>" or the gRPC status name
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self, threads: int = 4) -> None:
        self._stop.clear()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> Counter:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        return self.outcomes

    def failures(self) -> dict[str, int]:
        return {key: n for key, n in self.outcomes.items() if not key.startswith("ok:")}

    def answered(self, key: str | None = None) -> int:
        """Outcomes counted so far: of `key`, or all."""
        counts = dict(self.outcomes)  # one C call: the threads may add a key meanwhile
        return counts.get(key, 0) if key else sum(counts.values())

    def wait_for_more(self, n: int, key: str | None = None, timeout_s: float = 60) -> None:
        """Until `n` more outcomes (of `key`) have been counted: with a request in flight per
        thread at most, all but that many were sent from now on."""
        target = self.answered(key) + n
        eventually(lambda: self.answered(key) >= target, f"{n} more outcomes {key or ''} than the {target - n} of {dict(self.outcomes)}", timeout_s)

    def _run(self) -> None:
        connection = triton.InferenceServerClient(self.address)
        x = np.ones((1, 64), np.float32)
        request = triton.InferInput("x", [1, 64], "FP32")
        request.set_data_from_numpy(x)
        sent = 0
        while not self._stop.is_set() and sent < 100_000:  # bounded, whatever happens
            sent += 1
            try:
                result = connection.infer(MODEL, [request], client_timeout=30)
                self.outcomes[f"ok:{result.get_response().parameters['quiver.version'].string_param}"] += 1
            except triton.InferenceServerException as exc:
                self.outcomes[exc.status() or "error"] += 1


@dataclass
class Stack:
    control_plane: ControlPlane
    head: RayHead
    router: ServerProcess
    operator: Operator
    jobs: JobRunner
    kubelet: Kubelet
    custom: client.CustomObjectsApi
    batch: client.BatchV1Api
    inputs: Path
    routes_file: Path
    load: Load

    @property
    def capture(self) -> Path:
        return self.routes_file.parent / "capture"

    def deployment(self, name: str = MODEL) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)

    def apply(self, name: str, spec: dict[str, Any]) -> None:
        try:
            self.custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
        except client.ApiException:
            body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment",
                    "metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec}
            self.custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)
        else:
            self.custom.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name, {"spec": spec})

    def wait(self, what: str, check: Callable[[dict], bool], timeout_s: float = 120, name: str = MODEL) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            body = self.deployment(name)
            if check(body):
                return body
            time.sleep(0.2)
        raise AssertionError(
            f"timed out waiting for {what}; status: {body.get('status')}\noperator log:\n{self.operator.log()[-6000:]}\n"
            f"router log:\n{self.router.log()[-3000:]}\njob errors: {self.jobs.errors}, kubelet errors: {self.kubelet.errors}"
        )


def eventually(check: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def removed(stack: Stack, app: str) -> bool:
    """Gone, or on its way out (Serve lets a replica finish what it holds before it stops)."""
    return stack.head.serve_applications().get(app, {}).get("status", "DELETING") == "DELETING"


def condition(body: dict, kind: str) -> dict:
    return next((c for c in body.get("status", {}).get("conditions", []) if c["type"] == kind), {})


def router_counter(stack: Stack, name: str, **labels: str) -> float:
    """The sum of the router's `name` samples whose labels include these."""
    text = urllib.request.urlopen(stack.router.metrics_url, timeout=10).read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def spec_for(stack: Stack, version: int, w: np.ndarray | None = None, **rollout: Any) -> dict[str, Any]:
    """Version `version` of the digits model, with its own weights unless `w` says otherwise."""
    source = build_gemm(stack.inputs / f"digits-{version}.onnx", weights(version) if w is None else w)
    return {
        "model": {"name": MODEL, "version": str(version), "source": f"file://{source}"},
        "optimization": {"variants": ["fp32"], "evalData": str(stack.inputs / "eval.npz"), "maxAccuracyDrop": 0.05},
        "placement": [{"variant": "fp32", "pool": "cpu", "minReplicas": 1, "maxReplicas": 1, "numCpus": 0.5}],
        "rollout": {"strategy": "Canary", "steps": [10, 50, 100], "intervalSeconds": 2,
                    "gates": {"maxErrorRate": 0.01, "maxP99LatencyMs": 4000, "minRequests": 10}} | rollout,
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, control_plane: ControlPlane) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("operator")
    store, inputs = work / "store", work / "inputs"
    store.mkdir()
    inputs.mkdir()
    np.savez(inputs / "eval.npz", x=np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32))
    routes_file = work / "routes.json"
    routes_file.write_text('{"models": {}}')  # what the chart's ConfigMap starts with
    api = control_plane.api()  # the test, the Kubelet and the JobRunner act as the cluster's administrator
    established(api, CRD_FILE)
    control_plane.namespace(NAMESPACE)
    kubeconfig = operator_identity(control_plane, NAMESPACE, work)
    with ray_head(num_cpus=4) as head:
        env = environment({**head.env, "KUBECONFIG": str(kubeconfig)})
        # Capture on, at rate 0: only a model whose spec.capture says so is captured.
        router_args = ["--ray-address", head.gcs_address, "--store", str(store), "--routes", str(routes_file),
                       "--capture", str(work / "capture"), "--capture-rate", "0"]
        with quiver_process("router", *router_args, env=env) as router:
            kubelet, jobs = Kubelet(api, "quiver-routes", routes_file), JobRunner(api, work / "jobs.log")
            operator = Operator(
                ["--namespace", NAMESPACE, "--store", str(store), "--image", "quiver:test", "--ray-dashboard", head.dashboard_url,
                 "--routes-configmap", "quiver-routes", "--router-metrics", router.metrics_url, "--pools", "cpu", "--tick-s", "0.5"],
                env, work / "operator.log",
            )
            kubelet.start()
            jobs.start()
            operator.start()
            stack = Stack(control_plane, head, router, operator, jobs, kubelet, client.CustomObjectsApi(api), client.BatchV1Api(api),
                          inputs, routes_file, Load(router.address))
            try:
                yield stack
            finally:
                stack.load.stop()
                operator.stop()
                jobs.stop()
                kubelet.stop()


def test_first_version_is_optimized_deployed_routed_and_ready(stack: Stack) -> None:
    stack.apply(MODEL, spec_for(stack, 1))
    body = stack.wait("version 1 ready", lambda b: condition(b, "Ready").get("status") == "True")
    status = body["status"]
    assert status["currentVersion"] == "1" and status["traffic"] == {"1": 100}
    # The API server counts spec changes only (status is a subresource): one so far.
    assert body["metadata"]["generation"] == 1 and status["observedGeneration"] == 1
    assert condition(body, "Optimized")["status"] == "True" and condition(body, "Deployed")["status"] == "True"
    assert status["variants"][0]["name"] == "fp32" and status["variants"][0]["pool"] == "cpu"
    assert stack.wait("the replica counted", lambda b: b["status"]["variants"][0].get("replicas") == 1)
    # The Job ran the optimization the spec asked for, into the shared store.
    command = stack.jobs.commands[0]
    assert command[:3] == ["quiver", "optimize", str(stack.inputs / "digits-1.onnx")]
    assert command[command.index("--variants") + 1] == "fp32" and command[command.index("--version") + 1] == "1"
    job = stack.batch.read_namespaced_job("digits-optimize-1", NAMESPACE)
    assert job.spec.template.spec.containers[0].image == "quiver:test"
    # Deployed through the Serve REST API; routed by the router from the routes the operator wrote.
    assert stack.head.serve_applications()["digits.1.fp32"]["status"] == "RUNNING"
    eventually(lambda: routes(stack.routes_file)["models"] == {MODEL: {"1": 100}}, f"the routes file to name version 1 {stack.kubelet.errors}")
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    request = triton.InferInput("x", [3, 64], "FP32")
    request.set_data_from_numpy(x)
    deadline = time.monotonic() + 60
    while True:  # the router follows the routes file a moment after the kubelet wrote it
        try:
            result = triton.InferenceServerClient(stack.router.address).infer(MODEL, [request])
            break
        except triton.InferenceServerException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    expected = reference(stack.inputs / "digits-1.onnx", {"x": x})["y"]
    np.testing.assert_allclose(result.as_numpy("y"), expected, rtol=1e-5, atol=1e-5)


def test_kubectl_get_shows_the_printer_columns(stack: Stack) -> None:
    # What `kubectl get md` prints is the API server's Table, built from the CRD's printer columns.
    api = stack.custom.api_client
    response = api.call_api("GET", f"{api.configuration.host}/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}",
                            header_params={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"})
    table = json.loads(response.read())
    columns = [c["name"] for c in table["columnDefinitions"]]
    assert columns == ["Name", "Version", "Phase", "Serving", "Traffic", "Ready", "Age"]
    [row] = table["rows"]
    assert row["cells"][:6] == [MODEL, "1", "Serving", "1", "1:100%", "True"]


def test_the_api_server_refuses_specs_the_crd_schema_forbids(stack: Stack) -> None:
    """The CRD's schema, run by the API server itself: nothing reaches the operator."""
    broken = {
        "spec.model.version": lambda spec: spec["model"].update(version="-bad"),
        "spec.rollout.steps": lambda spec: spec["rollout"].update(steps=[0, 100]),
        "spec.placement[0].pool": lambda spec: spec["placement"][0].update(pool="-tpu"),
        "spec.rollout.shadow.sampleRate": lambda spec: spec["rollout"].update(shadow={"sampleRate": 1.5}),
        "spec.rollout.gates.minAgreement": lambda spec: spec["rollout"]["gates"].update(minAgreement=-0.1),
        "spec.capture.rate": lambda spec: spec.update(capture={"rate": 2}),
        "spec.model": lambda spec: spec.pop("model"),
    }
    for field_path, breaks in broken.items():
        spec = spec_for(stack, 1)
        breaks(spec)
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": "refused"}, "spec": spec}
        with pytest.raises(client.ApiException) as refused:
            stack.custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)
        message = refused.value.body
        assert refused.value.status == 422 and (field_path in message or field_path.replace("[0]", "") in message), message
    assert [md["metadata"]["name"] for md in stack.custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)["items"]] == [MODEL]


def test_canary_moves_traffic_step_by_step_without_failing_a_request(stack: Stack) -> None:
    stack.load.start()
    stack.load.wait_for_more(20, "ok:1")  # version 1 serves the load before version 2 is applied
    started = time.monotonic()
    stack.apply(MODEL, spec_for(stack, 2))
    seen: list[dict] = []
    phases: dict[str, float] = {}  # when each phase was first seen, for the breakdown

    def track(body: dict) -> bool:
        traffic = body.get("status", {}).get("traffic")
        if traffic and (not seen or seen[-1] != traffic):
            seen.append(traffic)
        phases.setdefault(body["status"].get("phase", ""), time.monotonic() - started)
        return body["status"].get("currentVersion") == "2"

    body = stack.wait("version 2 to take all traffic", track)
    elapsed = time.monotonic() - started
    assert body["status"]["observedGeneration"] == body["metadata"]["generation"] == 2
    assert [t for t in seen if "2" in t] == [{"1": 90, "2": 10}, {"1": 50, "2": 50}, {"1": 0, "2": 100}, {"2": 100}]
    assert body["status"]["previousVersion"] == "1"
    assert condition(body, "RolloutProgressing")["reason"] == "Complete"
    stack.wait("version 1's applications removed", lambda b: not b["status"].get("retiring"))
    assert removed(stack, "digits.1.fp32")
    stack.load.wait_for_more(20)  # the load goes on without version 1's applications
    outcomes = stack.load.stop()
    assert not stack.load.failures(), outcomes
    assert outcomes["ok:1"] > 0 and outcomes["ok:2"] > 0
    print(f"apply → 100% of traffic on version 2: {elapsed:.1f} s; phases first seen at {phases}; outcomes {dict(outcomes)}")


def test_breached_latency_gate_rolls_back_and_the_serving_version_keeps_serving(stack: Stack) -> None:
    stack.load.outcomes.clear()
    stack.load.start()
    spec = spec_for(stack, 3)
    # A deliberately slow variant: each batch waits 8 s to fill, twice the 4 s p99 gate, which
    # healthy versions stay well under even on a starved machine (their worst seen: 2.4 s).
    spec["placement"][0]["batching"] = {"maxBatchSize": 64, "maxWaitMs": 8000}
    spec["rollout"]["gates"]["minRequests"] = 4
    stack.apply(MODEL, spec)
    body = stack.wait("version 3 rolled back", lambda b: condition(b, "Degraded").get("status") == "True")
    degraded = condition(body, "Degraded")
    assert degraded["reason"] == "GateBreached" and "p99" in degraded["message"], degraded
    assert body["status"]["currentVersion"] == "2" and body["status"]["failedVersion"] == "3"
    assert body["status"]["traffic"] == {"2": 100}
    stack.wait("version 3's applications removed", lambda b: not b["status"].get("retiring"))
    assert removed(stack, "digits.3.fp32")
    stack.load.wait_for_more(20)  # the load goes on without version 3's applications
    outcomes = stack.load.stop()
    assert not stack.load.failures(), f"{outcomes}\nrouter log:\n{stack.router.log()[-6000:]}"
    assert outcomes["ok:3"] > 0  # it did take its share before the gate closed


def test_a_version_that_disagrees_is_rolled_back_in_its_shadow_step_having_served_no_client(stack: Stack) -> None:
    """Version 5 is version 2 with its logits negated: it never picks version 2's class. It answers
    mirrored copies of every request version 2 answers, and is rolled back before any weight."""
    stack.load.outcomes.clear()
    stack.load.start()
    stack.load.wait_for_more(10, "ok:2")
    spec = spec_for(stack, 5, -weights(2), shadow={"sampleRate": 1.0, "minSamples": 100})
    spec["rollout"]["gates"]["minAgreement"] = 0.9
    stack.apply(MODEL, spec)
    phases, traffic, named = [], [], []
    x = triton.InferInput("x", [1, 64], "FP32")
    x.set_data_from_numpy(np.ones((1, 64), np.float32))

    def track(body: dict) -> bool:
        status = body.get("status", {})
        if status.get("phase") and phases[-1:] != [status["phase"]]:
            phases.append(status["phase"])
        if status.get("phase") == "Shadowing" and len(named) < 20:  # a client that names version 5 is refused
            connection = triton.InferenceServerClient(stack.router.address)
            if connection.is_model_ready(MODEL, "5"):
                named.append("ready")
            try:
                connection.infer(MODEL, [x], model_version="5")
                named.append("OK")
            except triton.InferenceServerException as exc:
                named.append(exc.status() + (": shadow" if "Shadow step" in exc.message() else ""))
        if status.get("traffic") and status["traffic"] not in traffic:
            traffic.append(status["traffic"])
        return status.get("failedVersion") == "5"  # Degraded is still True from version 3's breach

    body = stack.wait("version 5 rolled back in its Shadow step", track)
    degraded = condition(body, "Degraded")
    assert degraded["reason"] == "ShadowGateBreached", degraded
    numbers = re.search(r"agreement (\S+), 95% lower bound (\S+), over (\d+) rows: below minAgreement 0.9", degraded["message"])
    assert numbers, degraded["message"]
    agreement, lower, rows = float(numbers[1]), float(numbers[2]), int(numbers[3])
    assert agreement == 0 and lower == 0 and rows >= 100
    shadow = body["status"]["shadow"]
    assert (shadow["version"], shadow["against"], shadow["passed"], shadow["agreement"], shadow["rows"]) == ("5", "2", False, 0, rows)
    assert shadow["lowerBound"] < 1e-9
    assert phases[-2:] == ["Shadowing", "Failed"] and {"2": 100, "5": 0} in traffic and "5" not in body["status"]["traffic"]
    assert body["status"]["currentVersion"] == "2" and body["status"]["failedVersion"] == "5"
    # Not ready, and NOT_FOUND: in its Shadow step once the router has its table, or not in the table yet.
    assert set(named) <= {"StatusCode.NOT_FOUND: shadow", "StatusCode.NOT_FOUND"} and "StatusCode.NOT_FOUND: shadow" in named, named
    # The router compared at least those rows with version 2's answers, and served version 5 to no client.
    compared = router_counter(stack, "quiver_shadow_step_rows_total", version="5", reference_version="2")
    assert compared >= rows and router_counter(stack, "quiver_shadow_step_agreed_total", version="5") == 0
    assert router_counter(stack, "quiver_requests_total", model=MODEL, version="5") == 0
    stack.wait("version 5's applications removed", lambda b: not b["status"].get("retiring"))
    assert removed(stack, "digits.5.fp32")
    stack.load.wait_for_more(20)  # version 2 goes on serving every request
    outcomes = stack.load.stop()
    assert not stack.load.failures() and set(outcomes) == {"ok:2"}, outcomes
    print(f"Shadow step rollback: {degraded['message']}; rows compared at the router {compared:.0f}; outcomes {dict(outcomes)}")
    # The next rollouts have no Shadow step (a merge patch keeps what it does not name).
    stack.custom.patch_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, MODEL, {"spec": {"rollout": {"shadow": None, "gates": {"minAgreement": None}}}}
    )


def resumed_watch(stack: Stack, resource_version: str) -> dict:
    """The first event of a watch of the ModelDeployments resumed at `resource_version`."""
    api = stack.custom.api_client
    url = (f"{api.configuration.host}/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}"
           f"?watch=true&resourceVersion={resource_version}&timeoutSeconds=5")
    return json.loads(api.call_api("GET", url).read().splitlines()[0])


def test_api_server_restart_and_operator_kill_mid_rollout_neither_repeat_nor_skip_a_step(stack: Stack) -> None:
    stack.load.outcomes.clear()
    stack.load.start()
    stack.apply(MODEL, spec_for(stack, 4, intervalSeconds=4))
    body = stack.wait("step 1 of version 4", lambda b: b["status"].get("traffic") == {"2": 90, "4": 10})
    first_step_started = body["status"]["stepStartedAt"]
    # Every watch breaks; etcd's history is compacted, so a watch resumed where it left off is
    # answered 410 Gone, and kopf lists again and sees the object anew: no step may be taken twice.
    seen_version = body["metadata"]["resourceVersion"]
    core = client.CoreV1Api(stack.custom.api_client)
    core.create_namespaced_config_map(NAMESPACE, {"metadata": {"name": "after-step-1"}})  # history moves past it
    stack.control_plane.restart_apiserver()
    assert resumed_watch(stack, seen_version)["object"]["code"] == 410
    core.delete_namespaced_config_map("after-step-1", NAMESPACE)
    body = stack.wait("step 2 of version 4", lambda b: b["status"].get("traffic") == {"2": 50, "4": 50})
    assert [c[c.index("--version") + 1] for c in stack.jobs.commands].count("4") == 1  # one optimization, not one per watch
    step_started = body["status"]["stepStartedAt"]
    stack.operator.kill()
    # The operator stays down while the router serves the split it left: both versions answer.
    stack.load.wait_for_more(10, "ok:2")
    stack.load.wait_for_more(10, "ok:4")
    assert stack.deployment()["status"]["traffic"] == {"2": 50, "4": 50}
    stack.operator.start()
    seen: list[tuple[dict, float]] = []

    def track(body: dict) -> bool:
        status = body["status"]
        seen.append((status.get("traffic"), status.get("stepStartedAt")))
        return status.get("currentVersion") == "4"

    stack.wait("version 4 to take all traffic", track)
    # The step in progress kept its start (not begun again) and the next step followed it.
    assert all(started == step_started for traffic, started in seen if traffic == {"2": 50, "4": 50})
    assert first_step_started < step_started
    # No handler failed meanwhile (kopf would hold a failed timer back for a minute): an API
    # server away is a condition the next look retries, not an exception.
    assert "failed with an exception" not in stack.operator.log()
    assert {"2": 0, "4": 100} in [traffic for traffic, _ in seen] or seen[-1][0] == {"4": 100}
    outcomes = stack.load.stop()
    assert not stack.load.failures(), outcomes


def test_a_copy_of_the_serving_version_passes_its_shadow_step_and_takes_the_traffic(stack: Stack) -> None:
    """And its spec.capture has the router capture the model's requests, which it did not before."""
    assert not (stack.capture / MODEL).exists()
    stack.load.outcomes.clear()
    stack.load.start()
    spec = spec_for(stack, 7, weights(4), strategy="Immediate", shadow={"sampleRate": 1.0, "minSamples": 100})
    spec["rollout"]["gates"]["minAgreement"] = 0.9
    spec["capture"] = {"rate": 1.0, "maxMB": 1}
    stack.apply(MODEL, spec)
    traffic: list[dict] = []

    def track(body: dict) -> bool:
        seen = body.get("status", {}).get("traffic")
        if seen and seen not in traffic:
            traffic.append(seen)
        return body["status"].get("currentVersion") == "7"

    stack.wait("version 7 to take all traffic", track)
    assert traffic[traffic.index({"4": 100, "7": 0}):] == [{"4": 100, "7": 0}, {"4": 0, "7": 100}, {"7": 100}], traffic
    compared = router_counter(stack, "quiver_shadow_step_rows_total", version="7", reference_version="4")
    assert compared >= 100 and router_counter(stack, "quiver_shadow_step_agreed_total", version="7", reference_version="4") == compared
    shadow = stack.deployment()["status"]["shadow"]
    assert shadow["version"] == "7" and shadow["against"] == "4" and shadow["passed"] and shadow["agreement"] == 1.0
    assert shadow["lowerBound"] >= 0.9 and shadow["rows"] >= 100
    stack.load.wait_for_more(20, "ok:7")
    outcomes = stack.load.stop()
    assert not stack.load.failures(), outcomes
    # A segment holds 256 rows: the load sent far more since the route table asked for capture.
    eventually(lambda: any((stack.capture / MODEL).glob("*/*.npz")), "a captured segment")
    segment = np.load(sorted((stack.capture / MODEL).glob("*/*.npz"))[0])
    assert segment["x"].shape == (256, 64) and (segment["x"] == 1).all()  # what the load sends
    np.testing.assert_array_equal(segment["labels"], segment["output:y"].argmax(1))
    assert sum(path.stat().st_size for path in (stack.capture / MODEL).rglob("*.npz")) <= 2 << 20  # 1 MiB per version


def test_a_spec_that_cannot_work_says_why_and_deploys_nothing(stack: Stack) -> None:
    spec = spec_for(stack, 1)
    spec["model"]["name"] = "other"
    spec["placement"][0]["pool"] = "tpu"  # a name the schema admits, but not a pool of this cluster (--pools cpu)
    stack.apply("other", spec)
    body = stack.wait("the unknown pool reported", lambda b: condition(b, "Degraded").get("status") == "True", name="other")
    assert condition(body, "Degraded")["reason"] == "InvalidSpec"
    assert "spec.placement[0].pool 'tpu'" in condition(body, "Degraded")["message"]
    spec["placement"][0]["pool"] = "cpu"
    spec["rollout"]["steps"] = [50, 20]
    stack.apply("other", spec)
    body = stack.wait("the steps reported", lambda b: "spec.rollout" in condition(b, "Degraded").get("message", ""), name="other")
    assert "must rise and end at 100" in condition(body, "Degraded")["message"]
    assert not [job for job in stack.batch.list_namespaced_job(NAMESPACE).items if job.metadata.name.startswith("other-")]
    assert not [name for name in stack.head.serve_applications() if name.startswith("other.")]
    stack.custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "other")


def test_delete_removes_the_applications_and_routes_and_nothing_else(stack: Stack) -> None:
    assert stack.deployment()["metadata"]["finalizers"]  # kopf's: deletion waits for the operator
    stack.custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, MODEL)
    deadline = time.monotonic() + 60
    apps = [name for name in stack.head.serve_applications() if name.startswith(f"{MODEL}.")]
    while not all(removed(stack, app) for app in apps) or MODEL in routes(stack.routes_file)["models"]:
        assert time.monotonic() < deadline, f"not cleaned up:\n{stack.operator.log()[-4000:]}"
        time.sleep(0.3)
    # kopf's finalizer held the object until the operator had cleaned up; then the API server
    # deleted it, and the garbage collector the Jobs it owned. The route table stays.
    eventually(lambda: not stack.custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)["items"], "the object gone")
    eventually(lambda: not stack.batch.list_namespaced_job(NAMESPACE).items, "the Jobs garbage-collected")
    assert client.CoreV1Api(stack.custom.api_client).read_namespaced_config_map("quiver-routes", NAMESPACE).data


def test_a_route_edit_that_meets_another_writer_is_redone_not_lost(control_plane: ControlPlane, tmp_path: Path) -> None:
    """Someone writes the route table between the operator's read and its write: the API server
    refuses the stale write (409, resourceVersion), the operator reads again and edits again."""
    namespace = "routes-conflict"
    control_plane.namespace(namespace)
    operator = Kube(config.new_client_from_config(str(operator_identity(control_plane, namespace, tmp_path))), namespace)
    admin = client.CoreV1Api(control_plane.api())
    operator.edit_routes("quiver-routes", lambda routes: routes)  # created, empty
    seen: list[dict] = []

    def edit(routes: dict) -> dict:
        seen.append(json.loads(json.dumps(routes)))
        if len(seen) == 1:  # another writer gets in first
            admin.patch_namespaced_config_map("quiver-routes", namespace, {"data": {ROUTES_KEY: '{"models": {"other": {"1": 100}}}'}})
        routes["models"]["digits"] = {"1": 100}
        return routes

    operator.edit_routes("quiver-routes", edit)
    assert seen == [{"models": {}}, {"models": {"other": {"1": 100}}}]
    written = json.loads(admin.read_namespaced_config_map("quiver-routes", namespace).data[ROUTES_KEY])
    assert written == {"models": {"other": {"1": 100}, "digits": {"1": 100}}}
