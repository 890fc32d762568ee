"""The router's Prometheus metrics: what the routing policy sees, exported.

Per model, version, variant and pool: requests by gRPC status, latency and how much of it the
replica spent queueing and computing, requests in flight (the router's view of queue depth),
batch sizes the replicas ran, routing decisions by reason, calls to replicas by path and how
many requests each carried.
What the router knows of each variant's replicas, set by router/state_metrics.py: whether it is
ready (router/health.py's readiness, what routing sees), how many replicas run, and how many of
the router's probes it missed; whether the last read of the replica directory succeeded.
Requests refused before a variant was chosen are counted per model and status. Both counts say
which door a request came through (`protocol`: grpc or http), taken from `PROTOCOL`, which the
protocol operations (router/operations.py) set for the request's task (dispatch, which counts, needs no argument for it). The operator's
rollout gates read error rate and p99 per version from here. Beside them, `statistics` keeps
Triton's per-version inference statistics (router/statistics.py), which the protocol serves.
Shadow comparisons (router/shadow.py) are per model, version and variant (the one compared with
its reference): rows compared, the windowed agreement with its lower bound and sample count,
whether it drifted, and shadow calls shed by reason; the capture's rows per model version.
A rollout's Shadow step counts per model, version, variant and the `reference_version` whose
answers it is compared with: rows compared and their summed agreement, calls by outcome and
their latency (counters: the operator's gates read their difference over the step).
"""

from __future__ import annotations

import contextvars
from http.server import HTTPServer

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from .statistics import InferenceStatistics

VARIANT_LABELS = ("model", "version", "variant", "pool")
SHADOW_LABELS = ("model", "version", "variant")
SHADOW_STEP_LABELS = (*SHADOW_LABELS, "reference_version")
GRPC, HTTP = "grpc", "http"
# The protocol of the request the current task serves (router/operations.py sets it).
PROTOCOL: contextvars.ContextVar[str] = contextvars.ContextVar("quiver_protocol", default=GRPC)
_LATENCY_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# From a small model's run (0.1 ms) to a replica that stalls.
_REPLICA_SECONDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "quiver_requests",
            "Dispatched requests by final gRPC status and protocol",
            [*VARIANT_LABELS, "code", "protocol"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "quiver_request_latency_seconds",
            "Time from dispatch to answer",
            VARIANT_LABELS,
            buckets=_LATENCY_SECONDS,
            registry=self.registry,
        )
        # What the latency above spent in the replica (Triton's queue and compute durations): the
        # rest is the router and the hop to the replica.
        self.replica_queue = Histogram(
            "quiver_replica_queue_seconds",
            "Time a request waited in the replica before its batch started to run",
            VARIANT_LABELS,
            buckets=_REPLICA_SECONDS,
            registry=self.registry,
        )
        self.replica_compute = Histogram(
            "quiver_replica_compute_seconds",
            "ONNX Runtime time of the batch that served a request",
            VARIANT_LABELS,
            buckets=_REPLICA_SECONDS,
            registry=self.registry,
        )
        self.in_flight = Gauge("quiver_in_flight_requests", "Requests dispatched, not yet answered", VARIANT_LABELS, registry=self.registry)
        self.batch_requests = Histogram(
            "quiver_batch_requests",
            "Requests in the replica batch that served a request",
            VARIANT_LABELS,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.decisions = Counter(
            "quiver_routing_decisions", "Routing decisions by reason", [*VARIANT_LABELS, "reason"], registry=self.registry
        )
        self.route_weight = Gauge(
            "quiver_route_weight", "Versions in the route table and their traffic weights", ["model", "version"], registry=self.registry
        )
        self.variant_ready = Gauge(
            "quiver_variant_ready", "1 while the variant can answer: a replica runs and answers the router's probes",
            VARIANT_LABELS, registry=self.registry,
        )
        self.variant_replicas = Gauge(
            "quiver_variant_replicas", "Replicas of the variant that run: Serve's count, or the replica directory's if it lists more",
            VARIANT_LABELS, registry=self.registry,
        )
        self.probe_failures = Counter(
            "quiver_probe_failures", "The router's probes of the variant that got no answer in time", VARIANT_LABELS,
            registry=self.registry,
        )
        self.directory_up = Gauge(
            "quiver_replica_directory_up", "1 when the router's last read of the replica directory succeeded", registry=self.registry
        )
        self.calls = Counter(
            "quiver_replica_calls",
            "Calls to replicas, by path: direct (the replica's data plane) or serve (its Serve handle)",
            [*VARIANT_LABELS, "path"],
            registry=self.registry,
        )
        self.call_requests = Histogram(
            "quiver_call_requests",
            "Requests the router coalesced into one call to a replica",
            VARIANT_LABELS,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        # How far the policy's prediction (router/stats.py) was from what came back, per answered request.
        self.prediction_error = Histogram(
            "quiver_prediction_error",
            "|predicted - observed| / observed latency of each answered request, as predicted when it was dispatched",
            VARIANT_LABELS,
            buckets=(0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8, 1, 1.5, 2, 3, 5, 10),
            registry=self.registry,
        )
        self.rejected = Counter(
            "quiver_rejected_requests",
            "Requests refused before dispatch, by gRPC status and protocol",
            ["model", "code", "protocol"],
            registry=self.registry,
        )

        self.shadow_comparisons = Counter(
            "quiver_shadow_comparisons", "Rows compared with the reference variant's answer", SHADOW_LABELS, registry=self.registry
        )
        self.shadow_agreement = Gauge(
            "quiver_shadow_agreement", "Agreement with the reference over the last rows compared", SHADOW_LABELS, registry=self.registry
        )
        self.shadow_lower_bound = Gauge(
            "quiver_shadow_agreement_lower_bound", "95 % lower bound of that agreement (Wilson; cosine: mean - 1.96 SE)",
            SHADOW_LABELS, registry=self.registry,
        )
        self.shadow_samples = Gauge(
            "quiver_shadow_agreement_samples", "Rows the agreement is over", SHADOW_LABELS, registry=self.registry
        )
        self.shadow_drifted = Gauge(
            "quiver_shadow_drifted", "1 while live accuracy is more than the margin below the offline one", SHADOW_LABELS,
            registry=self.registry,
        )
        self.shadow_shed = Counter(
            "quiver_shadow_shed", "Shadow calls not made: queue full, reference loaded, or the call failed (never retried)",
            [*SHADOW_LABELS, "reason"], registry=self.registry,
        )
        self.shadow_step_rows = Counter(
            "quiver_shadow_step_rows", "Rows of a version in its Shadow step compared with the serving version's answers",
            SHADOW_STEP_LABELS, registry=self.registry,
        )
        self.shadow_step_agreed = Counter(
            "quiver_shadow_step_agreed", "Those rows' summed agreement scores (top1: rows with the same class)",
            SHADOW_STEP_LABELS, registry=self.registry,
        )
        self.shadow_step_calls = Counter(
            "quiver_shadow_step_calls", "Mirrored calls to a version in its Shadow step, by outcome (ok or error)",
            [*SHADOW_STEP_LABELS, "outcome"], registry=self.registry,
        )
        self.shadow_step_latency = Histogram(
            "quiver_shadow_step_latency_seconds", "Time the answered mirrored calls took",
            SHADOW_STEP_LABELS, buckets=_LATENCY_SECONDS, registry=self.registry,
        )
        self.capture_rows = Counter("quiver_capture_rows", "Rows captured for recalibration", ["model", "version"], registry=self.registry)
        self.capture_dropped = Gauge(
            "quiver_capture_dropped_segments", "Captured segments not written (over the bound, or the disk refused)",
            ["model", "version"], registry=self.registry,
        )

        # Triton's statistics extension: the same calls, summed per model version for the protocol to serve.
        self.statistics = InferenceStatistics()
        self._variants: dict[tuple[str, str, str, str], VariantMetrics] = {}

    def variant(self, model: str, version: str, variant: str, pool: str) -> VariantMetrics:
        """One variant's metrics, looked up once per variant instead of per request."""
        labels = (model, version, variant, pool)
        found = self._variants.get(labels)
        if found is None:
            found = self._variants[labels] = VariantMetrics(self, labels)
        return found

    def refused(self, model: str, code: str) -> Counter:
        """The count of `model`'s requests refused with `code` through the current request's protocol."""
        return self.rejected.labels(model, code, PROTOCOL.get())

    def show_routes(self, weights: dict[str, dict[str, int]]) -> None:
        """The route table in force (model → version → weight); the operator retires a version
        only once no router lists it."""
        self.route_weight.clear()
        for model, versions in weights.items():
            for version, weight in versions.items():
                self.route_weight.labels(model, version).set(weight)

    def serve(self, host: str, port: int) -> HTTPServer:
        """Expose /metrics over HTTP on host:port from a daemon thread; `shutdown()` stops it."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return server


class VariantMetrics:
    """The labelled children of one (model, version, variant, pool): `.labels()` takes a lock and
    builds its key on every call, several times per request; these are kept instead."""

    def __init__(self, metrics: RouterMetrics, labels: tuple[str, str, str, str]) -> None:
        self._metrics = metrics
        self._labels = labels
        self.in_flight = metrics.in_flight.labels(*labels)
        self.latency = metrics.latency.labels(*labels)
        self.replica_queue = metrics.replica_queue.labels(*labels)
        self.replica_compute = metrics.replica_compute.labels(*labels)
        self.batch_requests = metrics.batch_requests.labels(*labels)
        self.call_requests = metrics.call_requests.labels(*labels)
        self.prediction_error = metrics.prediction_error.labels(*labels)
        self._requests: dict[tuple[grpc.StatusCode, str], Counter] = {}
        self._decisions: dict[str, Counter] = {}
        self._calls: dict[str, Counter] = {}

    def requests(self, code: grpc.StatusCode) -> Counter:
        """The count of requests finished with `code`, through the current request's protocol."""
        key = (code, PROTOCOL.get())
        found = self._requests.get(key)
        if found is None:
            found = self._requests[key] = self._metrics.requests.labels(*self._labels, code.name, key[1])
        return found

    def calls(self, path: str) -> Counter:
        found = self._calls.get(path)
        if found is None:
            found = self._calls[path] = self._metrics.calls.labels(*self._labels, path)
        return found

    def decisions(self, reason: str) -> Counter:
        found = self._decisions.get(reason)
        if found is None:
            found = self._decisions[reason] = self._metrics.decisions.labels(*self._labels, reason)
        return found
