"""The router's probes and health (router/health.py) over fake Serve handles: when a variant is lost,
when it is back, what is never probed, and what grpc.health.v1 and the metrics (quiver_variant_ready,
quiver_probe_failures_total: router/state_metrics.py) say meanwhile."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2

from quiver.router.health import ProbedReadiness, Reachability, ServingHealth
from quiver.router.metrics import RouterMetrics
from quiver.router.routes import RouteTable, VariantRoute
from quiver.router.state_metrics import StateMetrics
from quiver.serving import AppState, Manifest, ModelVersion, app_name

from .test_tracing import FakeHandle

SERVICE = "inference.GRPCInferenceService"


def two_models() -> tuple[RouteTable, dict[str, FakeHandle], list]:
    """`m` (one variant) and `z` (one variant that scales to zero)."""
    handles, routes, versions = {}, [], []
    for name, replicas in (("m", {}), ("z", {"autoscaling": {"min_replicas": 0, "max_replicas": 1}})):
        manifest = Manifest.model_validate({
            "name": name, "version": "1",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 1]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1]}],
            "variants": [{"name": "a", "file": "m.onnx", "sha256": "0" * 64, "pool": "gpu", "replicas": replicas}],
        })
        version = ModelVersion(manifest, Path("."))
        versions.append(version)
        handles[name] = FakeHandle(answering=True)
        routes.append(VariantRoute(version, manifest.variants[0], handles[name]))
    return RouteTable(routes), handles, versions


def test_a_variant_is_lost_after_missed_probes_and_found_again_and_health_follows() -> None:
    routes, handles, versions = two_models()
    probed: list[str] = []
    for name, handle in handles.items():
        remote = handle.ready.remote
        handle.ready.remote = lambda remote=remote, name=name: (probed.append(name), remote())[1]

    metrics = RouterMetrics()
    m_labels = {"model": "m", "version": "1", "variant": "a", "pool": "gpu"}

    def sample(name: str, labels: dict[str, str] = m_labels) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    async def scenario() -> list[tuple[str, bool, int, float | None, float | None]]:
        readiness = ProbedReadiness(
            routes, poll=lambda: {app_name(v, v.manifest.variants[0]): AppState("RUNNING", 1) for v in versions}, probe_timeout_s=0.05,
            metrics=metrics,
        )
        await readiness.refresh()
        servicer = health.aio.HealthServicer()
        serving = ServingHealth(SERVICE, servicer, routes, readiness)
        exported = StateMetrics(metrics, routes, readiness, endpoints=None, traffic=None)
        m = routes.lookup("m").variants["a"]
        seen = []

        async def look(step: str) -> None:
            await serving.update()
            exported.update()
            seen.append((
                step, readiness.ready(m), servicer._server_status[SERVICE],
                sample("quiver_variant_ready"), sample("quiver_probe_failures_total"),
            ))

        handles["m"].answering = False
        await readiness.reachability.probe_all()
        await readiness.reachability.probe_all()
        await look("never answered yet: not lost")
        handles["m"].answering = True
        await readiness.reachability.probe_all()
        handles["m"].answering = False
        await readiness.reachability.probe_all()
        await look("one miss")
        await readiness.reachability.probe_all()
        await look("two misses: lost")
        assert "has not answered the router's probes" in readiness.why_not(m)
        handles["m"].answering = True
        await readiness.reachability.probe_all()
        await look("answers again")
        assert sample("quiver_variant_replicas") == 1.0  # Serve's count: there is no data plane here
        # A version that leaves the route table takes its series with it.
        routes.replace([route for route in routes.routes() if route.manifest.name != "m"])
        exported.update()
        assert (sample("quiver_variant_ready"), sample("quiver_probe_failures_total")) == (None, None)
        return seen

    seen = asyncio.run(scenario())
    serving_, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    assert seen == [
        ("never answered yet: not lost", True, serving_, 1.0, 2.0),
        ("one miss", True, serving_, 1.0, 3.0),
        ("two misses: lost", False, not_serving, 0.0, 4.0),
        ("answers again", True, serving_, 1.0, 4.0),
    ]
    # The variant that scales to zero is never probed, but shown: ready (Serve runs a replica), no probe failures.
    z_labels = {**m_labels, "model": "z"}
    assert (sample("quiver_variant_ready", z_labels), sample("quiver_probe_failures_total", z_labels)) == (1.0, 0.0)
    assert "z" not in probed  # a variant that may scale to zero is never woken by a probe


def test_a_variant_whose_calls_answered_before_any_probe_did_is_lost_when_it_stops() -> None:
    """A node lost right after the router started: the variant's calls came back, its first probe
    had not yet. It is lost all the same, and the call waiting on it is withdrawn."""
    routes, handles, _ = two_models()
    m = routes.lookup("m").variants["a"]
    now = [0.0]

    async def scenario() -> tuple[bool, bool]:
        reachability = Reachability(routes, serving=lambda route: True, timeout_s=0.05, clock=lambda: now[0])
        loop = asyncio.get_running_loop()
        reachability.finished(reachability.started(m, loop.create_future(), "default"), grpc.StatusCode.OK)
        waiting = loop.create_future()
        reachability.started(m, waiting, "default")
        handles["m"].answering = False  # the node is gone
        now[0] = 10.0
        await reachability.probe_all()
        await reachability.probe_all()
        return reachability.answering(m), waiting.cancelled()

    assert asyncio.run(scenario()) == (False, True)
