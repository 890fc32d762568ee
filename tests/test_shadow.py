"""Accuracy on live traffic end to end: int8 calibrated on one distribution, served another.

A one-layer classifier is optimized with int8-static calibrated on N(0, 1) inputs, then served
(`quiver serve --capture`) inputs whose first features are six times wider. The router compares
the int8 answers with fp32's in the background; its live agreement must match what ONNX Runtime
measures directly on the same rows, the drift must be reported and routed around, the capture
must hold exactly the rows of tokens that allow it, and `quiver optimize --calibration CAPTURE`
must restore the agreement.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from quiver.router.metrics import RouterMetrics
from quiver.router.routes import VariantRoute, VersionRoutes
from quiver.router.shadow import Shadow as ShadowRouter
from quiver.router.shadow import ShadowSettings
from quiver.router.traffic import TrafficSplit
from quiver.serving import InferenceResult, Manifest, ModelVersion
from quiver.serving.manifest import Shadow
from quiver.serving.optimize import OptimizeSettings, SpeedBudget, VariantKind, load_dataset, optimize
from quiver.serving.requests import rows as request_rows

from .models import build_gemm, reference
from .serverproc import ServerProcess, quiver_serve

FEATURES, CLASSES = 16, 8
CAPTURING, PRIVATE = "c" * 32, "p" * 32  # tokens: the second's scope forbids capture


def calibration_rows(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, FEATURES)).astype(np.float32)


def shifted_rows(rows: int, seed: int) -> np.ndarray:
    """What production sends: the first four features six times wider than calibration saw."""
    x = calibration_rows(rows, seed)
    x[:, :4] *= 6
    return x


def optimized(store: Path, sources: Path, version: str, data: Path) -> Path:
    model = sources / "gemm.onnx"
    if not model.exists():
        build_gemm(model, np.random.default_rng(0).standard_normal((FEATURES, CLASSES)))
    optimize(OptimizeSettings(
        model=model, name="gemm", version=version, store=store, eval=data, calibration=data,
        variants=(VariantKind.FP32, VariantKind.INT8_STATIC), max_accuracy_drop=0.2,
        speed=SpeedBudget(seconds=0.05, max_runs=20, throughput_batch=8),
    ))
    return store / "gemm" / version


def agreement(directory: Path, x: np.ndarray) -> float:
    """int8-static's top-1 agreement with fp32 on `x`, ONNX Runtime run directly."""
    fp32 = reference(directory / "fp32.onnx", {"x": x})["y"].argmax(1)
    int8 = reference(directory / "int8-static.onnx", {"x": x})["y"].argmax(1)
    return float((fp32 == int8).mean())


def infer(server: ServerProcess, token: str, x: np.ndarray, parameters: dict | None = None) -> tuple[int, dict]:
    body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    if parameters:
        body["parameters"] = parameters
    request = urllib.request.Request(
        f"{server.http_url}/v2/models/gemm/infer", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def metric(server: ServerProcess, name: str, variant: str = "int8-static") -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    found = re.search(rf'^{name}\{{[^}}]*model="gemm"[^}}]*variant="{variant}"[^}}]*\}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@pytest.mark.timeout(600)
def test_live_agreement_drift_capture_and_recalibration(tmp_path: Path) -> None:
    sources, store, capture = tmp_path / "sources", tmp_path / "store", tmp_path / "capture"
    sources.mkdir()
    np.savez(sources / "calibration.npz", x=calibration_rows(512, 1))
    version = optimized(store, sources, "1", sources / "calibration.npz")
    # Clients get int8 by default; it is compared on every request it answers and routed around once it drifts.
    manifest = Manifest.model_validate_json((version / "manifest.json").read_text())
    shadow = Shadow(sample_rate=1.0, min_samples=100, margin=0.05, exclude=True)
    variants = [v.model_copy(update={"shadow": shadow}) if v.name == "int8-static" else v for v in manifest.variants]
    manifest = Manifest.model_validate({**manifest.model_dump(), "variants": variants, "default_variant": "int8-static"})
    (version / "manifest.json").write_text(manifest.model_dump_json(exclude_none=True))
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{CAPTURING} *\n{PRIVATE} * no-capture\n")

    served: dict[str, list[np.ndarray]] = {"int8-static": [], "fp32": []}
    captured_rows, private = [], shifted_rows(40, 3)
    with quiver_serve(str(store), "--capture", str(capture), "--capture-rate", "1", "--token-file", str(tokens)) as server:
        for i, x in enumerate(np.split(shifted_rows(600, 2), 300)):
            status, answer = infer(server, CAPTURING, x)
            assert status == 200, answer
            served[answer["parameters"]["quiver.variant"]].append(x)
            captured_rows.append(x)
            if i % 15 == 0:  # a request whose token may not be captured (it is compared all the same), now and then
                x = private[i // 15 * 2 : i // 15 * 2 + 2]
                status, answer = infer(server, PRIVATE, x)
                assert status == 200, answer
                served[answer["parameters"]["quiver.variant"]].append(x)
        int8_rows = np.concatenate(served["int8-static"])
        # Every row int8 answered is compared (none shed: one client at a time): wait for the last.
        deadline = time.monotonic() + 60
        while metric(server, "quiver_shadow_comparisons_total") < len(int8_rows):
            assert time.monotonic() < deadline, "timed out waiting for the last comparison"
            time.sleep(0.1)

        direct = agreement(version, int8_rows)
        live = metric(server, "quiver_shadow_agreement")
        print(f"rows compared {len(int8_rows)}: live agreement {live:.4f}, ONNX Runtime directly {direct:.4f}, "
              f"lower bound {metric(server, 'quiver_shadow_agreement_lower_bound'):.4f}")
        assert abs(live - direct) <= 0.03
        assert metric(server, "quiver_shadow_agreement_samples") == len(int8_rows)
        assert metric(server, "quiver_shadow_drifted") == 1
        assert "drifted from its reference" in server.log()
        # Routed around once it drifted: the later requests went to fp32.
        assert len(served["fp32"]) > 100 and 100 <= len(int8_rows) < 300
        # min_accuracy reads the live bound: int8's offline accuracy (≈0.99) would have passed.
        status, answer = infer(server, CAPTURING, private[:1], {"quiver.precision": "int8", "quiver.min_accuracy": "0.9"})
        assert status == 400 and "quiver.min_accuracy" in answer["error"], answer

    # The capture holds the capturing token's rows, with fp32's top-1 as labels, and nothing of the other's.
    captured = load_dataset(capture / "gemm" / "1", manifest)
    sent = np.concatenate(captured_rows)
    assert captured.rows == len(sent)
    assert {row.tobytes() for row in captured.inputs["x"]} == {row.tobytes() for row in sent}
    np.testing.assert_array_equal(captured.labels, reference(version / "fp32.onnx", captured.inputs)["y"].argmax(1))

    recalibrated = optimized(store, sources, "2", capture / "gemm" / "1")
    fresh = shifted_rows(2000, 4)
    before, after = agreement(version, fresh), agreement(recalibrated, fresh)
    print(f"int8-static agreement with fp32 on fresh shifted rows: calibrated on N(0,1) {before:.4f}, on the capture {after:.4f}")
    assert before < 0.85 and after >= 0.95


def test_a_compared_variant_shows_drifted_0_from_its_first_request() -> None:
    """quiver_shadow_drifted exists before any drift, so that a dashboard or alert sees every compared variant."""
    manifest = Manifest.model_validate({
        "name": "m", "version": "1",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, FEATURES]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, CLASSES]}],
        "variants": [
            {"name": "fp32", "file": "m.onnx", "sha256": "0" * 64},
            {"name": "int8", "file": "i.onnx", "sha256": "1" * 64, "shadow": {"sample_rate": 0.5}},
        ],
    })
    version = ModelVersion(manifest, Path("."))
    routes = VersionRoutes(version, {v.name: VariantRoute(version, v, handle=None) for v in manifest.variants})
    metrics = RouterMetrics()

    class NotSampled(random.Random):
        def random(self) -> float:
            return 0.99  # above the sample rate: this request is not compared, nothing is queued

    shadow = ShadowRouter(ShadowSettings(), metrics, call=None, admits=lambda route: True, rng=NotSampled())
    labels = {"model": "m", "version": "1", "variant": "int8"}
    assert metrics.registry.get_sample_value("quiver_shadow_drifted", labels) is None
    x = calibration_rows(1, 0)
    shadow.offer(routes, routes.variants["int8"], {"x": x}, {"y": np.zeros((1, CLASSES), np.float32)}, may_capture=False)
    assert metrics.registry.get_sample_value("quiver_shadow_drifted", labels) == 0.0
    # The reference itself is not compared.
    shadow.offer(routes, routes.variants["fp32"], {"x": x}, {"y": np.zeros((1, CLASSES), np.float32)}, may_capture=False)
    assert metrics.registry.get_sample_value("quiver_shadow_drifted", {**labels, "variant": "fp32"}) is None


def test_a_shadow_step_compares_the_new_versions_answers_with_the_ones_clients_got(tmp_path: Path) -> None:
    """The route table names version 2 in its Shadow step: a sample of version 1's answered requests
    is sent to version 2 (ONNX Runtime on its model, where a router would reach its replicas) and
    counted against version 1's answers, per (model, version, variant, reference_version). The inputs
    come in one reused buffer, as from a client's shared memory: each mirror asks its own rows."""
    def manifest(version: str) -> Manifest:
        return Manifest.model_validate({
            "name": "m", "version": version,
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, FEATURES]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, CLASSES]}],
            "variants": [{"name": "fp32", "file": "fp32.onnx", "sha256": "0" * 64}],
        })

    w = np.random.default_rng(0).standard_normal((FEATURES, CLASSES))
    models = {"1": build_gemm(tmp_path / "1.onnx", w), "2": build_gemm(tmp_path / "2.onnx", w * [1, 1, 1, 1, -1, -1, -1, -1])}
    table = {v: ModelVersion(manifest(v), tmp_path) for v in models}
    routes = {v: VersionRoutes(table[v], {"fp32": VariantRoute(table[v], table[v].manifest.variants[0], handle=None)}) for v in models}
    split = TrafficSplit.model_validate({"models": {"m": {"1": 100, "2": 0}}, "shadow": {"m": {"2": {"of": "1", "sample_rate": 1.0}}}})
    metrics, asked = RouterMetrics(), []

    async def call(route: VariantRoute, inputs: dict[str, np.ndarray]) -> InferenceResult:
        asked.append(route.key)
        return InferenceResult(reference(models[route.manifest.version], inputs), batch_requests=1, batch_rows=len(inputs["x"]))

    async def run(batches: list[np.ndarray]) -> None:
        shadow = ShadowRouter(
            # No client waits here: a loop slowed by the machine sheds nothing (busy is False).
            ShadowSettings(), metrics, call, admits=lambda route: True, busy=lambda: False, split=lambda: split,
            lookup=lambda model, version: routes[version], pick=lambda version: version.variants["fp32"],
        )
        window = np.empty_like(batches[0])  # a client's shared-memory region: every request in it, reused once answered
        for x in batches:
            window[:] = x
            shadow.offer(routes["1"], routes["1"].variants["fp32"], {"x": window}, reference(models["1"], {"x": x}), may_capture=False)
        window[:] = 0  # the workers run after the client wrote on: they must still see each request's own rows
        while metrics.registry.get_sample_value("quiver_shadow_step_rows_total", labels) != len(rows):
            await asyncio.sleep(0.01)
        await shadow.close()

    labels = {"model": "m", "version": "2", "variant": "fp32", "reference_version": "1"}
    rows = calibration_rows(120, 5)
    asyncio.run(asyncio.wait_for(run(np.split(rows, 40)), 30))
    direct = (reference(models["1"], {"x": rows})["y"].argmax(1) == reference(models["2"], {"x": rows})["y"].argmax(1)).sum()
    assert 0 < direct < len(rows) / 2  # half the classes negated: most rows disagree
    assert metrics.registry.get_sample_value("quiver_shadow_step_agreed_total", labels) == direct
    assert metrics.registry.get_sample_value("quiver_shadow_step_calls_total", {**labels, "outcome": "ok"}) == 40
    assert metrics.registry.get_sample_value("quiver_shadow_step_latency_seconds_count", labels) == 40
    assert set(asked) == {("m", "2", "fp32")}  # version 1's own answers are the reference: never asked again


def test_the_rows_of_a_request_for_mirrors_and_capture_allow_scalars_and_no_inputs() -> None:
    """What dispatch, the Shadow step's incomparable rows and the capture count (they once raised here)."""
    assert request_rows({"x": np.zeros((3, 2)), "y": np.zeros(5)}) == 3
    assert request_rows({"x": np.float32(2.0)}) == request_rows({"x": np.array(2.0)}) == request_rows({}) == 1


def test_the_route_table_refuses_a_shadow_version_with_traffic() -> None:
    with pytest.raises(ValueError, match="shadow.m.2: a version in its Shadow step needs weight 0"):
        TrafficSplit.model_validate({"models": {"m": {"1": 90, "2": 10}}, "shadow": {"m": {"2": {"of": "1", "sample_rate": 0.5}}}})
    with pytest.raises(ValueError, match="shadow.m.2.of: version '3' takes no traffic"):
        TrafficSplit.model_validate({"models": {"m": {"1": 100, "2": 0}}, "shadow": {"m": {"2": {"of": "3", "sample_rate": 0.5}}}})
    with pytest.raises(ValueError, match="less than or equal to 1"):
        TrafficSplit.model_validate({"models": {"m": {"1": 100, "2": 0}}, "shadow": {"m": {"2": {"of": "1", "sample_rate": 1.5}}}})
