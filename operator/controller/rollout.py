"""One look at a ModelDeployment: compare spec and status, take the next step, return the new status.

Idempotent and resumable: everything it decides from is in the status, so the same look after
a restart takes the same step, and a step already taken is not taken again. The order of each
transition keeps the serving version safe: a new version's applications run before any traffic
moves to it; a version leaves the route table before its applications are removed (at the
next look, so that routers have re-read the table); on any failure the weights go back first.
With spec.rollout.shadow, a new version first answers only mirrored copies of the serving
version's requests (Shadowing, at 0 %), and its gates, agreement among them, are judged before
any canary weight is given.

    (new version) → Optimizing → [Tuning] → Deploying → Shifting (step by step, gates read) → Serving
                         ↘            ↘           ↘             ↘ breach: weights back, applications removed
                          Failed (the version before keeps serving; a new spec.model.version retries)

Tuning runs only where spec.tuning asks for it: `quiver tune` records each variant's serving
settings in the manifest, which the deployment then runs with (spec.placement overrides them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from quiver.serving.apps import VariantApp, app_prefix
from quiver.serving.manifest import Manifest, Placement, Variant
from quiver.serving import signing
from quiver.serving.integrity import IntegrityError
from quiver.serving.store import StoreError, read_version

from . import gates
from .jobs import job_name, optimize_job, tune_job
from .kube import JobPhase, JobState, Kube
from .serve_api import ServeApi
from .settings import OperatorSettings
from .spec import ModelDeploymentSpec, ShadowStep
from .status import ConditionType as C
from .status import Phase, Status

logger = logging.getLogger(__name__)


class NotDeployable(Exception):
    """The spec passed the schema but cannot work with what the optimization produced."""


def _failure(job: str, state: JobState) -> str:
    return f"job {job}: {state.reason or state.phase.value}" + (f": {state.message}" if state.message else "")


@dataclass
class Reconciler:
    settings: OperatorSettings
    kube: Kube
    serve: ServeApi
    clock: Callable[[], float] = time.time

    def look(self, name: str, uid: str | None, spec: ModelDeploymentSpec, status: Status) -> Status:
        status = status.model_copy(deep=True)
        self._retire(spec.model.name, status)
        wanted = spec.model.version
        busy = status.phase in (Phase.OPTIMIZING, Phase.TUNING, Phase.DEPLOYING, Phase.SHADOWING, Phase.SHIFTING)
        if busy and status.target_version != wanted:
            self._abandon(name, spec, status, f"spec.model.version changed to {wanted!r}")
            busy = False
        if not busy and wanted not in (status.current_version, status.failed_version):
            self._start(name, uid, spec, status)
        if status.phase is Phase.OPTIMIZING:
            self._optimizing(name, uid, spec, status)
        if status.phase is Phase.TUNING:
            self._tuning(name, spec, status)
        before = status.model_copy(deep=True)
        try:
            if status.phase is Phase.DEPLOYING:
                self._deploying(spec, status)
            if status.phase is Phase.SHADOWING:
                self._shadowing(spec, status)
            if status.phase is Phase.SHIFTING:
                self._shifting(spec, status)
        except StoreError as exc:  # from _route, before it edits anything (what came before only read): tried again next look
            status = before
            status.set(C.ROLLOUT_PROGRESSING, True, "WaitingForStore", f"cannot read version {status.target_version}: {exc}")
        self._count_replicas(spec.model.name, status)
        return status

    # Transitions

    def _start(self, name: str, uid: str | None, spec: ModelDeploymentSpec, status: Status) -> None:
        version = spec.model.version
        status.target_version = version
        try:
            self._check_pools(spec)
        except NotDeployable as exc:
            self._fail(spec, status, "InvalidSpec", str(exc))
            return
        self.kube.create_job(optimize_job(name, uid, spec, self.settings))
        status.phase, status.failed_version = Phase.OPTIMIZING, None
        status.set(C.OPTIMIZED, None, "JobRunning", f"job {job_name(name, version)} optimizes version {version}")
        status.set(C.ROLLOUT_PROGRESSING, True, "Optimizing", f"version {version}: optimizing")
        logger.info("%s: version %s: optimization job started", name, version)

    def _optimizing(self, name: str, uid: str | None, spec: ModelDeploymentSpec, status: Status) -> None:
        version = status.target_version
        job = job_name(name, version)
        state = self.kube.job_state(job)
        if state.phase is JobPhase.RUNNING:
            return
        if state.phase is not JobPhase.SUCCEEDED:
            why = _failure(job, state)
            status.set(C.OPTIMIZED, False, "JobFailed", why)
            self._fail(spec, status, "OptimizationFailed", why)
            return
        try:
            manifest = self._published(spec, version)
        except NotDeployable as exc:
            status.set(C.OPTIMIZED, True, "Published", f"version {version} published")
            status.set(C.DEPLOYED, False, "NotDeployable", str(exc))
            self._fail(spec, status, "NotDeployable", str(exc))
            return
        status.set(C.OPTIMIZED, True, "Published", f"version {version}: published {', '.join(manifest.variant_names)}")
        if spec.tuning is not None:
            tuned = [v for v in manifest.variant_names if spec.tuning.variants is None or v in spec.tuning.variants]
            if tuned:
                self.kube.create_job(tune_job(name, uid, spec.model, spec.tuning, tuned, self.settings))
                status.phase = Phase.TUNING
                status.set(C.TUNED, None, "JobRunning", f"job {job_name(name, version, 'tune')} tunes {', '.join(tuned)}")
                status.set(C.ROLLOUT_PROGRESSING, True, "Tuning", f"version {version}: tuning")
                return
        self._deploy(spec, status, manifest)

    def _tuning(self, name: str, spec: ModelDeploymentSpec, status: Status) -> None:
        """The tuning Job's outcome: a failure fails the version (its settings were asked to be
        measured, and a miss of the SLO says the version would miss it serving too)."""
        version = status.target_version
        job = job_name(name, version, "tune")
        state = self.kube.job_state(job)
        if state.phase is JobPhase.RUNNING:
            return
        if state.phase is not JobPhase.SUCCEEDED:
            why = _failure(job, state) + self._missed_slo(spec, version)
            status.set(C.TUNED, False, "JobFailed", why)
            self._fail(spec, status, "TuningFailed", why)
            return
        try:
            manifest = self._published(spec, version)  # signed again by the Job, where versions are signed
        except NotDeployable as exc:
            status.set(C.TUNED, False, "NotDeployable", str(exc))
            self._fail(spec, status, "NotDeployable", str(exc))
            return
        chosen = [f"{v.name}: {v.profile.throughput:.0f} rows/s at p99 {v.profile.p99_ms:.1f} ms"
                  for v in manifest.variants if v.profile is not None and v.profile.meets_slo]
        status.set(C.TUNED, True, "Tuned", f"version {version}: {'; '.join(chosen) or 'tuned'}")
        self._deploy(spec, status, manifest)

    def _missed_slo(self, spec: ModelDeploymentSpec, version: str) -> str:
        """Why `quiver tune` exited 1, where it did: the variants none of whose settings met the SLO."""
        try:
            manifest = read_version(self.settings.store / spec.model.name / version).manifest
        except StoreError:
            return ""
        missed = [f"{v.name} (p99 ≤ {v.profile.slo_p99_ms:g} ms asked, {v.profile.p99_ms:.1f} ms at best)"
                  for v in manifest.variants if v.profile and not v.profile.meets_slo]
        return f"; no setting meets the SLO for {', '.join(missed)}" if missed else ""

    def _deploy(self, spec: ModelDeploymentSpec, status: Status, manifest: Manifest) -> None:
        """Start the version's Serve applications."""
        version = manifest.version
        self.serve.put_apps([app.config() for app in self._apps(spec, manifest)])
        status.phase, status.deploy_started_at = Phase.DEPLOYING, self.clock()
        status.variants = [self._variant_status(spec, manifest, v) for v in manifest.variant_names]
        status.set(C.DEPLOYED, None, "Deploying", f"version {version}: starting {len(manifest.variants)} applications")

    def _deploying(self, spec: ModelDeploymentSpec, status: Status) -> None:
        version = status.target_version
        prefix = app_prefix(spec.model.name, version)
        states = {n: s for n, s in self.serve.statuses().items() if n.startswith(prefix)}
        failed = [n for n, s in states.items() if s in ("DEPLOY_FAILED", "UNHEALTHY")]
        if failed:
            messages = self.serve.messages()
            why = "; ".join(f"{n}: {messages.get(n, '')[:300]}" for n in failed)
            status.set(C.DEPLOYED, False, "DeployFailed", why)
            self._fail(spec, status, "DeployFailed", why, remove_target=True)
            return
        if not states or any(s != "RUNNING" for s in states.values()):
            if self.clock() - (status.deploy_started_at or self.clock()) > self.settings.deploy_timeout_s:
                why = f"applications not running after {self.settings.deploy_timeout_s:.0f} s: {states}"
                status.set(C.DEPLOYED, False, "DeployTimeout", why)
                self._fail(spec, status, "DeployTimeout", why, remove_target=True)
            return
        status.set(C.DEPLOYED, True, "Running", f"version {version}: {len(states)} applications running")
        if status.current_version is None:  # nothing to compare with: the first version takes all traffic
            self._complete(spec, status)
            return
        if spec.rollout.shadow is not None:
            status.phase, status.step = Phase.SHADOWING, 0
            self._route(spec, status, {status.current_version: 100, status.target_version: 0}, mirror=True)
            self._take_baseline(spec, status)
            status.set(
                C.ROLLOUT_PROGRESSING, True, "Shadowing",
                f"version {status.target_version}: Shadow step, {spec.rollout.shadow.sample_rate:.0%} of version "
                f"{status.current_version}'s requests mirrored",
            )
            return
        status.phase, status.step = Phase.SHIFTING, 0
        self._begin_step(spec, status)

    def _shadowing(self, spec: ModelDeploymentSpec, status: Status) -> None:
        """The Shadow step: judged on the mirrored calls of the step; a pass begins the canary steps."""
        sample = self._step_sample(spec, status)
        if not isinstance(sample, gates.ShadowSample):
            return
        shadow = spec.rollout.shadow or ShadowStep()  # a spec edited mid-step: the step ends by its defaults
        verdict = gates.judge_shadow(gates.ShadowSample.from_status(status.baseline), sample, spec.rollout.gates, shadow)
        if verdict.outcome is gates.Outcome.WAIT:
            status.set(C.ROLLOUT_PROGRESSING, True, "WaitingForTraffic", f"Shadow step: {verdict.message}")
            return
        status.shadow = {
            "version": status.target_version, "against": status.current_version, "passed": verdict.outcome is gates.Outcome.PASS,
            "agreement": verdict.agreement, "lowerBound": verdict.lower_bound, "rows": int(verdict.rows),
        }
        if verdict.outcome is gates.Outcome.BREACH:
            why = f"version {status.target_version} in its Shadow step against version {status.current_version}: {verdict.message}"
            self._fail(spec, status, "ShadowGateBreached", why, remove_target=True)
            return
        logger.info("version %s passed its Shadow step: %s", status.target_version, verdict.message)
        status.set(C.ROLLOUT_PROGRESSING, True, "ShadowPassed", f"version {status.target_version}: Shadow step passed: {verdict.message}")
        status.phase, status.step = Phase.SHIFTING, 0
        self._begin_step(spec, status)

    def _shifting(self, spec: ModelDeploymentSpec, status: Status) -> None:
        sample = self._step_sample(spec, status)
        if not isinstance(sample, gates.Sample):
            return
        verdict = gates.judge(gates.Sample.from_status(status.baseline or {}), sample, spec.rollout.gates)
        weights = spec.rollout.weights
        if verdict.outcome is gates.Outcome.WAIT:
            status.set(C.ROLLOUT_PROGRESSING, True, "WaitingForTraffic", f"step {status.step + 1}/{len(weights)}: {verdict.message}")
            return
        if verdict.outcome is gates.Outcome.BREACH:
            why = f"version {status.target_version} at {weights[status.step]}%: {verdict.message}"
            self._fail(spec, status, "GateBreached", why, remove_target=True)
            return
        logger.info("version %s passed step %d (%d%%): %s", status.target_version, status.step + 1, weights[status.step], verdict.message)
        if status.step + 1 == len(weights):
            self._complete(spec, status)
            return
        status.step += 1
        self._begin_step(spec, status, baseline=sample)

    def _begin_step(self, spec: ModelDeploymentSpec, status: Status, baseline: gates.Sample | None = None) -> None:
        weights = spec.rollout.weights
        share = weights[status.step]
        self._route(spec, status, {status.current_version: 100 - share, status.target_version: share})
        if baseline is None:
            self._take_baseline(spec, status)
        else:
            status.baseline, status.step_started_at = baseline.to_status(), self.clock()
        status.set(
            C.ROLLOUT_PROGRESSING, True, "Shifting",
            f"version {status.target_version}: step {status.step + 1}/{len(weights)} at {share}%",
        )

    def _step_sample(self, spec: ModelDeploymentSpec, status: Status) -> gates.Sample | gates.ShadowSample | None:
        """The step's counters now, once its interval has passed (None: not yet, or unreadable)."""
        if status.baseline is None:  # the routers could not be read when the step began: it begins now
            self._take_baseline(spec, status)
            return None
        if self.clock() - (status.step_started_at or 0) < spec.rollout.interval_seconds:
            return None
        return self._scrape(spec, status)

    def _scrape(self, spec: ModelDeploymentSpec, status: Status) -> gates.Sample | gates.ShadowSample | None:
        """The target version's counters for this phase's gates (None: the routers could not be read, said in status)."""
        try:
            urls, model = self._router_metrics(), spec.model.name
            if status.phase is Phase.SHADOWING:
                return gates.scrape_shadow(urls, model, status.target_version, status.current_version)
            return gates.scrape(urls, model, status.target_version)
        except OSError as exc:
            status.set(C.ROLLOUT_PROGRESSING, True, "WaitingForMetrics", f"cannot read the routers' metrics: {exc}")
            return None

    def _take_baseline(self, spec: ModelDeploymentSpec, status: Status) -> None:
        """The step's gates count from here; unreadable routers leave it to the next look."""
        sample = self._scrape(spec, status)
        if sample is None:
            status.baseline = None
            return
        status.baseline, status.step_started_at = sample.to_status(), self.clock()

    def _complete(self, spec: ModelDeploymentSpec, status: Status) -> None:
        version, old = status.target_version, status.current_version
        self._route(spec, status, {version: 100})
        if old is not None and old != version:
            status.retiring.append(old)
            status.previous_version = old
        status.current_version, status.target_version = version, None
        status.phase, status.baseline, status.step_started_at = Phase.SERVING, None, None
        status.set(C.ROLLOUT_PROGRESSING, False, "Complete", f"version {version} takes all traffic")
        status.set(C.READY, True, "Serving", f"version {version} serves")
        status.set(C.DEGRADED, False, "Healthy", "")
        logger.info("%s: version %s takes all traffic", spec.model.name, version)

    def _fail(self, spec: ModelDeploymentSpec, status: Status, reason: str, why: str, remove_target: bool = False) -> None:
        """The target version failed: traffic back to the serving version, its applications removed."""
        target, current = status.target_version, status.current_version
        if remove_target and target:
            if current is not None:
                self._route(spec, status, {current: 100})
            status.retiring.append(target)
        status.failed_version, status.target_version = target, None
        status.phase, status.baseline, status.step_started_at = Phase.FAILED, None, None
        status.set(C.ROLLOUT_PROGRESSING, False, reason, why)
        status.set(C.DEGRADED, True, reason, why)
        if current is None:
            status.set(C.READY, False, reason, why)
        logger.warning("version %s failed (%s): %s", target, reason, why)

    def _abandon(self, name: str, spec: ModelDeploymentSpec, status: Status, why: str) -> None:
        target, current = status.target_version, status.current_version
        if target and status.phase in (Phase.OPTIMIZING, Phase.TUNING):  # its Job would hold its CPUs and write on
            self.kube.delete_job(job_name(name, target, "tune" if status.phase is Phase.TUNING else "optimize"))
        if current is not None and target in status.traffic:
            self._route(spec, status, {current: 100})
        if target:
            status.retiring.append(target)
        status.target_version, status.phase = None, Phase.SERVING if current else None
        status.set(C.ROLLOUT_PROGRESSING, False, "Superseded", f"version {target} abandoned: {why}")

    def _retire(self, model: str, status: Status) -> None:
        """Remove the applications of versions out of the route table once no router lists them
        (a mounted ConfigMap reaches the pods a while after it changes)."""
        if not status.retiring:
            return
        urls = self._router_metrics()
        try:
            routed = gates.routed_versions(urls, model) if urls else set()
        except OSError as exc:
            logger.warning("cannot read the routers' route tables, retiring later: %s", exc)
            return
        waiting = []
        for version in dict.fromkeys(status.retiring):
            if version in (status.current_version, status.target_version):
                continue
            if version in routed:
                waiting.append(version)
                continue
            self.serve.remove_apps(app_prefix(model, version))
            logger.info("%s: version %s retired", model, version)
        status.retiring = waiting

    def _count_replicas(self, model: str, status: Status) -> None:
        running = self.serve.running_replicas()
        for variant in status.variants:
            variant["replicas"] = running.get(f"{app_prefix(model, variant['version'])}{variant['name']}", 0)

    # The world

    def _published(self, spec: ModelDeploymentSpec, version: str) -> Manifest:
        directory = self.settings.store / spec.model.name / version
        try:
            manifest = read_version(directory).manifest
            if self.settings.verify_keys:
                signing.verify(directory, list(self.settings.verify_keys), f"{spec.model.name}:{version}")
        except (StoreError, IntegrityError) as exc:
            raise NotDeployable(str(exc)) from exc
        published = set(manifest.variant_names)
        for index, placed in enumerate(spec.placement):
            if placed.variant not in published:
                raise NotDeployable(
                    f"spec.placement[{index}].variant {placed.variant!r} was not published "
                    f"(published: {sorted(published)}; see the optimization report)"
                )
        default = spec.routing.default_variant
        if default and default not in published:
            raise NotDeployable(f"spec.routing.defaultVariant {default!r} was not published (published: {sorted(published)})")
        limit = spec.rollout.gates.max_p99_latency_ms
        measured = [v.metrics.p99_ms for v in manifest.variants if v.metrics]
        if limit is not None and measured and min(measured) > limit:
            raise NotDeployable(
                f"spec.rollout.gates.maxP99LatencyMs {limit:g} cannot be met: the fastest variant measured "
                f"p99 {min(measured):.2f} ms at batch 1 before any serving overhead"
            )
        return manifest

    def _check_pools(self, spec: ModelDeploymentSpec) -> None:
        known = self.settings.pools
        for index, placed in enumerate(spec.placement):
            if known and placed.pool not in known:
                raise NotDeployable(f"spec.placement[{index}].pool {placed.pool!r} is not a pool of this cluster ({sorted(known)})")

    def _apps(self, spec: ModelDeploymentSpec, manifest: Manifest) -> list[VariantApp]:
        return [
            VariantApp(
                store=self.settings.store,
                model=manifest.name,
                version=manifest.version,
                variant=name,
                placement=self._placement(spec, manifest.variant(name)),
                key_file=self.settings.model_key,
                verify_keys=list(self.settings.verify_keys),
            )
            for name in manifest.variant_names
        ]

    def _placement(self, spec: ModelDeploymentSpec, variant: Variant) -> Placement:
        """The spec's placement of `variant` over its manifest's settings (quiver tune's, when tuned)."""
        placed = spec.placement_of(variant.name)
        return placed.serve_placement(variant) if placed else Placement()

    def _variant_status(self, spec: ModelDeploymentSpec, manifest: Manifest, name: str) -> dict:
        variant = self._placement(spec, manifest.variant(name)).apply(manifest.variant(name))
        scaling = variant.replicas.autoscaling
        return {
            "name": name,
            "version": manifest.version,
            "pool": variant.pool,
            "precision": variant.precision.value,
            "minReplicas": scaling.min_replicas if scaling else variant.replicas.count,
            "maxReplicas": scaling.max_replicas if scaling else variant.replicas.count,
            "accuracy": variant.metrics.accuracy if variant.metrics else None,
            "accuracyDrop": variant.metrics.accuracy_drop if variant.metrics else None,
        }

    def _route(self, spec: ModelDeploymentSpec, status: Status, weights: dict[str, int], mirror: bool = False) -> None:
        """Weights for the model's versions, with the placement and default of a version new to the table;
        with `mirror`, the target version (at 0) is in its Shadow step, mirroring the serving one."""
        model = spec.model.name
        target = status.target_version
        placements = {}
        if target in weights and spec.placement:
            manifest = read_version(self.settings.store / model / target).manifest
            placements = {p.variant: self._placement(spec, manifest.variant(p.variant)) for p in spec.placement}

        def edit(routes: dict) -> dict:
            routes.setdefault("models", {})[model] = weights
            shadow, capture = routes.setdefault("shadow", {}), routes.setdefault("capture", {})
            shadow.pop(model, None)
            if mirror and spec.rollout.shadow is not None:
                shadow[model] = {target: {"of": status.current_version, "sample_rate": spec.rollout.shadow.sample_rate}}
            capture.pop(model, None)
            if spec.capture is not None:
                capture[model] = spec.capture.model_dump(exclude_none=True)
            for key in ("placement", "default_variant"):
                entries = routes.setdefault(key, {}).setdefault(model, {})
                for version in list(entries):
                    if version not in weights:
                        del entries[version]
            if target in weights:
                placement = {name: placed.model_dump(mode="json", exclude_none=True) for name, placed in placements.items()}
                if placement:
                    routes["placement"][model][target] = placement
                if spec.routing.default_variant:
                    routes["default_variant"][model][target] = spec.routing.default_variant
            return routes

        self.kube.edit_routes(self.settings.routes_configmap, edit)
        self._record_traffic(status, weights, target if mirror else None)

    def _record_traffic(self, status: Status, weights: dict[str, int], shadowing: str | None = None) -> None:
        status.traffic = dict(weights)
        status.traffic_summary = " ".join(f"{v}:shadow" if v == shadowing else f"{v}:{w}%" for v, w in weights.items())

    def _router_metrics(self) -> list[str]:
        urls = list(self.settings.router_metrics)
        if self.settings.router_selector:
            port = self.settings.router_metrics_port
            urls += [f"http://{ip}:{port}/metrics" for ip in self.kube.pod_ips(self.settings.router_selector)]
        return urls

    def forget(self, model: str) -> None:
        """The ModelDeployment is gone: its routes first, then its applications."""

        def edit(routes: dict) -> dict:
            for key in ("models", "placement", "default_variant", "shadow", "capture"):
                routes.get(key, {}).pop(model, None)
            return routes

        self.kube.edit_routes(self.settings.routes_configmap, edit)
        self.serve.remove_apps(f"{model}.")
