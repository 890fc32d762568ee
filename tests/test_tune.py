"""`quiver tune`: the search's budget and SLO, the store it writes, and replicas that run what it chose.

The search's own tests measure through `SyntheticServer`, which implements the search's
`Measure` interface with a latency model and advances an injected clock: what they check
(how many trials a budget admits, which point an SLO allows) must not hang on this shared
machine's noise. The end-to-end test measures through a real Serve replica.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from quiver.cli import main
from quiver.serving import (
    Batching,
    BatchLatency,
    ModelRuntime,
    Placement,
    Profile,
    ServingSettings,
    Threads,
    VariantApp,
    build_example,
    from_onnx_file,
    read_version,
    signing,
    write_version,
)
from quiver.serving import crypto
from quiver.serving.deployment import build_variant_app
from quiver.serving.store import sha256_file
from quiver.serving.tune import SearchResult, Space, Trial, TuneError, check_writable, profile, record, search
from tests.test_model_security import signing_keys


class SyntheticServer:
    """A `Measure` whose throughput grows with batch and replicas and whose p99 grows with the
    batch; each trial moves the clock by `cost_s` (its deployment and measurement)."""

    def __init__(self, cost_s: float = 2.0) -> None:
        self.now = 0.0
        self.cost_s = cost_s
        self.measured: list[ServingSettings] = []

    def clock(self) -> float:
        return self.now

    def __call__(self, settings: ServingSettings, seconds: float) -> Trial:
        self.now += self.cost_s
        self.measured.append(settings)
        batch = settings.max_batch_size
        throughput = 1000 * settings.replicas * min(batch, 32) ** 0.5 / (1 + settings.max_wait_ms) * settings.intra_op_threads ** 0.1
        p99 = 2.0 + batch * 0.5 + settings.max_wait_ms
        return Trial(settings, p99 / 2, p99, throughput, 100)


def test_the_search_stops_at_its_budget_and_reports_what_it_measured() -> None:
    server = SyntheticServer(cost_s=2.0)
    result = search(Space(cpus=2), server, budget_s=13.0, trial_s=1.0, clock=server.clock)
    # Trials start at 0, 2, 4 and 6; at 8 the longest trial so far (2 s) and the confirmation's
    # two no longer fit in the 5 s left (no confirmation here: the start stayed the best).
    assert result.out_of_budget
    assert len(result.trials) == 4 and [t.settings for t in result.trials] == server.measured
    assert server.now <= 13.0
    assert result.chosen is not None and result.chosen in result.trials


def test_the_search_converges_in_far_fewer_trials_than_the_grid() -> None:
    space = Space(cpus=4)
    server = SyntheticServer()
    result = search(space, server, budget_s=1e9, trial_s=1.0, clock=server.clock)
    grid = len(space.batch_sizes) * len(space.layouts) * len(space.threads) * len(space.waits_ms) * len(space.inter_op)
    assert not result.out_of_budget
    assert len(result.trials) < grid / 5
    chosen = result.chosen.settings
    # The synthetic optimum: the most replicas, batches of 32 or more, no wait, the most threads.
    assert (chosen.replicas, chosen.max_wait_ms, chosen.intra_op_threads) == (4, 0.0, 4)
    assert chosen.max_batch_size >= 32


class FlatServer(SyntheticServer):
    """Every setting serves alike, but the start's first measurement fell on a busy moment."""

    def __call__(self, settings: ServingSettings, seconds: float) -> Trial:
        self.now += self.cost_s
        self.measured.append(settings)
        unlucky = len(self.measured) == 1
        return Trial(settings, 2.0, 4.0, 100.0 if unlucky else 1000.0, 100)


def test_the_defaults_stand_unless_the_winner_beats_them_again() -> None:
    space, server = Space(cpus=2), FlatServer()
    result = search(space, server, budget_s=1e9, trial_s=1.0, clock=server.clock)
    winner = server.measured[1]  # the first challenger beat the unlucky start
    assert winner != space.start() and server.measured[-2:] == [space.start(), winner]
    assert result.kept_start is not None and result.chosen is result.kept_start
    assert result.chosen.settings == space.start() and profile(result, "cpu", []).settings == space.start()


def test_the_chosen_point_meets_the_slo() -> None:
    server = SyntheticServer()
    result = search(Space(cpus=2), server, slo_p99_ms=10.0, budget_s=1e9, trial_s=1.0, clock=server.clock)
    chosen = result.chosen
    assert chosen is not None and chosen.p99_ms <= 10.0
    assert any(t.p99_ms > 10.0 and t.throughput > chosen.throughput for t in result.trials)  # the SLO cost throughput
    assert max(t.throughput for t in result.meeting) == chosen.throughput
    found = profile(result, "cpu", [])
    assert found.meets_slo and found.p99_ms <= 10.0 and found.settings == chosen.settings


def test_none_meets_an_slo_below_every_point() -> None:
    server = SyntheticServer()
    result = search(Space(cpus=2), server, slo_p99_ms=0.5, budget_s=1e9, trial_s=1.0, clock=server.clock)
    assert result.trials and result.chosen is None
    found = profile(result, "cpu", [])
    assert not found.meets_slo and found.p99_ms == min(t.p99_ms for t in result.trials)
    with pytest.raises(ValueError, match="meets_slo is true but p99_ms"):
        Profile.model_validate({**found.model_dump(), "meets_slo": True})


def _store(root: Path) -> Path:
    directory = root / "digits" / "1"
    directory.mkdir(parents=True)
    manifest = from_onnx_file(build_example(directory / "model.onnx")).manifest
    write_version(root, manifest.model_copy(update={"name": "digits", "version": "1"}))
    return root


def _profile(meets_slo: bool = True) -> Profile:
    settings = ServingSettings(intra_op_threads=2, max_batch_size=8, max_wait_ms=1.0, replicas=2, cpus_per_replica=1.0)
    return Profile(
        pool="cpu", settings=settings, objective="throughput", slo_p99_ms=20.0, meets_slo=meets_slo, concurrency=16,
        p50_ms=3.0, p99_ms=9.0 if meets_slo else 30.0, throughput=5000.0, throughput_per_replica=2500.0,
        latency=[BatchLatency(batch_size=1, p50_ms=1.0, p99_ms=2.0), BatchLatency(batch_size=8, p50_ms=2.0, p99_ms=4.0)],
    )


def test_a_manifest_with_a_profile_round_trips_and_sets_the_variants_settings(tmp_path: Path) -> None:
    store = _store(tmp_path / "store")
    before = read_version(store / "digits" / "1")
    assert before.manifest.variants[0].profile is None  # written without one: older manifests load as they are
    after = record(store, before, {"fp32": _profile()})
    reread = read_version(after.directory)
    assert reread.manifest == after.manifest
    variant = reread.manifest.variant("fp32")
    assert variant.profile == _profile()
    assert variant.threads == Threads(intra_op=2, inter_op=1)
    assert variant.batching == Batching(max_batch_size=8, max_wait_ms=1.0)
    assert (variant.replicas.count, variant.replicas.num_cpus) == (2, 1.0)


def test_a_profile_that_misses_its_slo_is_recorded_but_changes_no_setting(tmp_path: Path) -> None:
    store = _store(tmp_path / "store")
    before = read_version(store / "digits" / "1")
    variant = record(store, before, {"fp32": _profile(meets_slo=False)}).manifest.variant("fp32")
    assert variant.profile == _profile(meets_slo=False)
    assert variant.model_copy(update={"profile": None}) == before.manifest.variant("fp32")


def test_a_signed_version_is_signed_again_or_refused(tmp_path: Path) -> None:
    store = _store(tmp_path / "store")
    private, public = signing_keys(tmp_path, "tuner")
    version = read_version(store / "digits" / "1")
    signing.sign(version.directory, private)
    with pytest.raises(TuneError, match="is signed.*--sign-key"):
        check_writable(version, None)
    record(store, version, {"fp32": _profile()}, sign_key=private)
    signing.verify(version.directory, [public], version.key)  # raises if the new manifest is not covered


def test_tune_refuses_a_store_without_the_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = _store(tmp_path / "store")
    assert main(["tune", str(store), "--model", "minilm", "--version", "1", "--budget-s", "1"]) == 2
    error = capsys.readouterr().err
    assert "has no model 'minilm' version '1'" in error and "digits:1" in error
    assert main(["tune", str(store), "--model", "digits", "--version", "1", "--variants", "int8"]) == 2
    assert "has no variant int8" in capsys.readouterr().err


def test_replicas_run_the_recorded_settings_unless_the_placement_overrides_them(tmp_path: Path) -> None:
    store = _store(tmp_path / "store")
    version = record(store, read_version(store / "digits" / "1"), {"fp32": _profile()})
    spec = VariantApp(store=store, model="digits", version="1", variant="fp32")
    deployment = build_variant_app(spec.config()["args"])._bound_deployment
    assert deployment.num_replicas == 2 and deployment.ray_actor_options["num_cpus"] == 1.0
    placed = deployment.init_args[1]  # the variant its replicas get
    assert placed.threads.intra_op == 2 and placed.batching == Batching(max_batch_size=8, max_wait_ms=1.0)

    override = Placement(batching=Batching(max_batch_size=64), threads=Threads(intra_op=1))
    args = spec.model_copy(update={"placement": override}).config()["args"]
    placed = build_variant_app(args)._bound_deployment.init_args[1]
    assert placed.batching.max_batch_size == 64 and placed.threads.intra_op == 1

    variant = version.manifest.variant("fp32")
    runtime = ModelRuntime((version.directory / variant.file).read_bytes(), "digits", version.manifest.inputs, threads=variant.threads)
    options = runtime._session.get_session_options()  # what ONNX Runtime was given
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 1)


def _encrypt(store: Path, key_file: Path) -> None:
    """The version's variant encrypted at rest, as `quiver optimize --encrypt-key` writes it."""
    key_file.write_bytes(os.urandom(crypto.KEY_BYTES))
    version = read_version(store / "digits" / "1")
    variant = version.manifest.variants[0]
    plain = version.path(variant)
    sealed = plain.with_name(plain.name + ".enc")
    sealed.write_bytes(crypto.encrypt(plain.read_bytes(), key_file.read_bytes(), crypto.associated_data("digits", "1", variant.name)))
    plain.unlink()
    variant = variant.model_copy(update={"file": sealed.name, "sha256": sha256_file(sealed), "encryption": crypto.ALGORITHM})
    write_version(store, version.manifest.model_copy(update={"variants": [variant]}))


def test_quiver_tune_measures_through_a_replica_and_records_the_chosen_point(tmp_path: Path) -> None:
    store = _store(tmp_path / "store")
    _encrypt(store, tmp_path / "model.key")  # the replicas it deploys decrypt with --model-key, as the operator's Job passes it
    # Its own process, as a user runs it: the search starts and stops a Ray instance of its own.
    run = subprocess.run(
        [sys.executable, "-m", "quiver", "tune", str(store), "--model", "digits", "--version", "1", "--model-key", str(tmp_path / "model.key"),
         "--budget-s", "12", "--trial-s", "0.5", "--loads", "1,4", "--slo-p99-ms", "60000", "--cpus", "1"],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    manifest = json.loads((store / "digits" / "1" / "manifest.json").read_text())
    variant = manifest["variants"][0]
    found = Profile.model_validate(variant["profile"])
    assert found.meets_slo and found.p99_ms <= 60000 and found.throughput > 0 and found.pool == "cpu"
    assert [point.batch_size for point in found.latency][:1] == [1]
    assert read_version(store / "digits" / "1").manifest.variant("fp32").batching.max_batch_size == found.settings.max_batch_size
    page = (store / "digits" / "1" / "tune.html").read_text()
    assert "fp32" in page and "data:image/png;base64," in page
    assert (store / "digits" / "1" / "tune.png").read_bytes().startswith(b"\x89PNG")


def test_an_autoscaled_variant_keeps_its_bounds_and_starts_with_the_tuned_count_within_them() -> None:
    from quiver.serving import Autoscaling, Replicas, Variant

    scaled = Variant(name="fp32", file="model.onnx", sha256="0" * 64,
                     replicas=Replicas(autoscaling=Autoscaling(min_replicas=1, max_replicas=2)))
    tuned = Variant.model_validate(_profile().settings.model_copy(update={"replicas": 3}).apply(scaled).model_dump())
    assert tuned.replicas.count == 2 and tuned.replicas.autoscaling == scaled.replicas.autoscaling


def test_a_setting_stands_at_its_busiest_load_within_the_slo() -> None:
    from quiver.serving.tune import operating_point

    settings = Space(cpus=1).start()
    points = [Trial(settings, 1.0, p99, rows, 10, clients) for clients, p99, rows in ((1, 2.0, 100.0), (4, 5.0, 350.0), (16, 30.0, 900.0))]
    assert operating_point(points, "throughput", 10.0).clients == 4
    assert operating_point(points, "throughput", None).clients == 16
    assert operating_point(points, "latency", 10.0).clients == 1
    assert operating_point(points, "throughput", 1.0).clients == 1  # none meets: the lowest p99
