"""Shadow comparisons' parts: the agreement math, specs refused naming the field, the capture scope of tokens, shedding."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from quiver.router.agreement import Window, row_scores
from quiver.serving.confidence import wilson_lower
from quiver.router.auth import CAPTURE, Authenticator, parse_tokens
from quiver.router.stats import VariantStats
from quiver.serving import Manifest
from quiver.serving.manifest import ShadowMetric

SHA = "0" * 64


def manifest(shadow: dict, output_shape: list[int] = [-1, 3], datatype: str = "FP32") -> dict:  # noqa: B006 - never mutated
    variant = {"file": "model.onnx", "sha256": SHA}
    return {
        "name": "m", "version": "1",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": datatype, "shape": output_shape}],
        "variants": [{"name": "fp32", **variant}, {"name": "int8", **variant, "shadow": shadow}],
    }


def test_wilson_lower_bound_matches_the_textbook() -> None:
    assert wilson_lower(10, 10) == pytest.approx(0.7225, abs=1e-4)  # 10 of 10 at 95 %
    assert wilson_lower(0, 0) == 0
    window = Window(ShadowMetric.TOP1)
    window.add(np.array([1.0] * 90 + [0.0] * 10))
    assert (window.count, window.agreement) == (100, 0.9) and window.lower_bound == pytest.approx(0.8256, abs=1e-3)


def test_rows_are_scored_by_the_metric() -> None:
    reference = np.array([[0.1, 0.9], [0.8, 0.2], [1.0, 0.0]])
    outputs = np.array([[0.2, 0.8], [0.3, 0.7], [1.0, 0.0005]])
    np.testing.assert_array_equal(row_scores(ShadowMetric.TOP1, outputs, reference, 0), [1, 0, 1])
    np.testing.assert_array_equal(row_scores(ShadowMetric.TOLERANCE, outputs, reference, 1e-3), [0, 0, 1])
    cosine = row_scores(ShadowMetric.COSINE, outputs, reference, 0)
    assert cosine[2] == pytest.approx(1.0) and cosine[1] == pytest.approx((0.24 + 0.14) / (np.hypot(0.3, 0.7) * np.hypot(0.8, 0.2)))


def test_a_window_forgets_the_oldest_rows() -> None:
    window = Window(ShadowMetric.TOP1, size=4)
    window.add(np.zeros(4))
    window.add(np.ones(3))
    assert (window.count, window.agreement) == (4, 0.75)


@pytest.mark.parametrize(
    ("shadow", "shape", "datatype", "field"),
    [
        ({"sample_rate": 1.5}, [-1, 3], "FP32", "variants.1.shadow.sample_rate"),
        ({"sample_rate": -0.1}, [-1, 3], "FP32", "variants.1.shadow.sample_rate"),
        ({"metric": "top1"}, [-1, 1], "FP32", "variants[1].shadow.metric"),
        ({"metric": "top1"}, [-1], "FP32", "variants[1].shadow.metric"),
        ({"metric": "cosine"}, [-1, 3], "BOOL", "variants[1].shadow.output"),
        ({"output": "z"}, [-1, 3], "FP32", "variants[1].shadow.output"),
        ({"metric": "psnr"}, [-1, 3], "FP32", "variants.1.shadow.metric"),
    ],
)
def test_bad_shadow_specs_are_refused_naming_the_field(shadow: dict, shape: list[int], datatype: str, field: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(field)):
        Manifest.model_validate(manifest(shadow, shape, datatype))


def test_a_regression_output_takes_a_tolerance_and_the_reference_is_fp32() -> None:
    parsed = Manifest.model_validate(manifest({"metric": "tolerance", "tolerance": 0.01}, [-1, 1]))
    assert parsed.reference.name == "fp32" and parsed.variant("int8").shadow.tolerance == 0.01
    with pytest.raises(ValidationError, match="reference_variant"):
        Manifest.model_validate({**manifest({}), "reference_variant": "fp64"})


def test_a_token_scope_may_forbid_capture(tmp_path: Path) -> None:
    capturing, private = "c" * 16, "p" * 16
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{capturing} *\n{private} digits no-capture\n")
    with pytest.raises(ValueError, match="line 1: .*no-capture"):
        parse_tokens(f"{capturing} * capture\n".encode())
    auth = Authenticator(tokens)
    assert auth.file.reload()

    def allowed(token: str) -> bool:
        auth.check([("authorization", f"Bearer {token}")], "digits")
        return CAPTURE.get()

    assert (allowed(private), allowed(capturing), allowed(private)) == (False, True, False)


def test_shadow_calls_are_shed_before_every_priority() -> None:
    stats = VariantStats(replicas=1, batch_size=64, queue_limit=256)
    stats.in_flight = 64  # a quarter of the queue: low priority still gets in, shadow calls do not
    assert stats.admits(-1) and not stats.admits_shadow()
    stats.in_flight = 63
    assert stats.admits_shadow()
    saturated = VariantStats(replicas=1, batch_size=8, queue_limit=256, in_flight=16)
    assert saturated.admits(-1) and not saturated.admits_shadow()


def test_the_shadow_queue_is_bounded_and_drops_are_counted() -> None:
    from quiver.router.metrics import RouterMetrics
    from quiver.router.routes import VariantRoute, VersionRoutes
    from quiver.router.shadow import Shadow, ShadowSettings
    from quiver.serving import ModelVersion

    parsed = Manifest.model_validate(manifest({"sample_rate": 1.0}))
    version = ModelVersion(parsed, Path("unused"))  # nothing here loads a model
    # Routes without handles: the reference is reached through `call`, the boundary the router's
    # dispatch provides (replicas over Ray), which a unit test cannot reach; it blocks here.
    routes = VersionRoutes(version, {name: VariantRoute(version, parsed.variant(name), None) for name in ("fp32", "int8")})
    metrics = RouterMetrics()
    release = asyncio.Event()

    async def call(route, inputs):
        await release.wait()
        raise RuntimeError("the reference failed")

    async def run() -> None:
        shadow = Shadow(ShadowSettings(queue=3, workers=1), metrics, call, admits=lambda route: True)
        x = {"x": np.zeros((1, 4), np.float32)}
        for _ in range(10):  # one taken by the worker, three queued, six dropped
            shadow.offer(routes, routes.variants["int8"], x, {"y": np.zeros((1, 3), np.float32)}, True)
            await asyncio.sleep(0)
        release.set()
        while not shadow._queue.empty():
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.01)
        await shadow.close()

    asyncio.run(run())
    shed = {sample.labels["reason"]: sample.value for sample in metrics.shadow_shed.collect()[0].samples if sample.name.endswith("_total")}
    assert shed == {"queue": 6, "error": 4}  # never retried


def test_a_route_table_whose_shadow_the_outputs_cannot_support_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from quiver.router.catalog import Catalog
    from quiver.router.routes import RouteTable
    from quiver.router.traffic import Traffic
    from quiver.serving import write_version

    write_version(tmp_path / "store", Manifest.model_validate(manifest({}, [-1, 1])))
    routes = tmp_path / "routes.json"
    catalog = Catalog(RouteTable(), Traffic({}), tmp_path / "store", routes, readiness=None, connect=lambda name: name)
    shadow = {"metric": "top1", "sample_rate": 0.5}
    routes.write_text(json.dumps({"models": {"m": {"1": 1}}, "placement": {"m": {"1": {"int8": {"shadow": shadow}}}}}))
    assert not catalog.file.reload() and catalog.file.value is None  # refused: the table in force stays
    assert "placement.m.1.int8.shadow.metric: top1 needs an output with a class axis" in caplog.text
    shadow["metric"] = "tolerance"
    routes.write_text(json.dumps({"models": {"m": {"1": 1}}, "placement": {"m": {"1": {"int8": {"shadow": shadow}}}}}))
    assert catalog.file.reload()
    placed = next(route.variant for route in catalog.file.value[0] if route.variant.name == "int8")
    assert placed.shadow.sample_rate == 0.5
