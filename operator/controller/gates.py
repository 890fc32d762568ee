"""Rollout gates: a version's error rate and p99 latency, read from the routers' Prometheus metrics.

A sample sums, over every router, the version's request counters and latency histogram (all
its variants). A step is judged on the difference between the sample at its start and now, so
the verdict covers exactly the requests of that step. Errors are the server's failures
(INTERNAL, UNAVAILABLE, DEADLINE_EXCEEDED, UNKNOWN, DATA_LOSS), not the callers' bad requests.

The Shadow step is judged the same way on the mirrored calls (router/shadow.py): their errors
(every failure: the serving version answered the same inputs) and p99, and the agreement of the
rows compared with the serving version's answers. `minAgreement` passes when the 95 % lower
bound of that agreement (Wilson's, on the step's rows) reaches it; cosine scores are summed as
if they were agreeing rows, which only widens the interval (a score in [0, 1] varies no more
than a 0/1 one with the same mean).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import urllib.request
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from quiver.serving.confidence import wilson_lower

from .spec import Gates, ShadowStep

SERVER_ERRORS = frozenset({"INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED", "UNKNOWN", "DATA_LOSS"})


@dataclass(frozen=True)
class Sample:
    requests: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # latency upper bound (s) → cumulative count

    def to_status(self) -> dict:
        return {"requests": self.requests, "errors": self.errors, "buckets": _buckets_to_status(self.buckets)}

    @classmethod
    def from_status(cls, data: dict) -> Sample:
        return cls(data.get("requests", 0.0), data.get("errors", 0.0), _buckets_from_status(data))


@dataclass(frozen=True)
class ShadowSample:
    """A version's mirrored calls in its Shadow step, compared with `reference`'s answers."""

    calls: float = 0.0
    errors: float = 0.0
    rows: float = 0.0
    agreed: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)
    shed: float = 0.0  # mirrors not sent (queue full, loaded, or no variant could answer): the version's shadow sheds

    def to_status(self) -> dict:
        return {
            "shadow": {"calls": self.calls, "errors": self.errors, "rows": self.rows, "agreed": self.agreed,
                       "buckets": _buckets_to_status(self.buckets), "shed": self.shed}
        }

    @classmethod
    def from_status(cls, data: dict) -> ShadowSample:
        data = data.get("shadow", {})
        return cls(data.get("calls", 0.0), data.get("errors", 0.0), data.get("rows", 0.0), data.get("agreed", 0.0),
                   _buckets_from_status(data), data.get("shed", 0.0))


def _buckets_to_status(buckets: dict[float, float]) -> list[list]:
    return [[str(le), n] for le, n in sorted(buckets.items())]  # "inf" survives JSON


def _buckets_from_status(data: dict) -> dict[float, float]:
    return {float(le): n for le, n in data.get("buckets", [])}


class Outcome(str, enum.Enum):
    PASS = "Pass"
    BREACH = "Breach"
    WAIT = "Wait"  # too few requests to judge yet


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    message: str
    requests: float = 0.0
    error_rate: float = 0.0
    p99_ms: float | None = None
    agreement: float | None = None
    lower_bound: float | None = None
    rows: float = 0.0


def scrape(urls: list[str], model: str, version: str, timeout_s: float = 5.0) -> Sample:
    """The version's counters summed over these routers' /metrics pages."""
    requests = errors = 0.0
    buckets: dict[float, float] = {}
    for url in urls:
        for family in _families(url, timeout_s):
            for sample in family.samples:
                labels = sample.labels
                if labels.get("model") != model or labels.get("version") != version:
                    continue
                if sample.name == "quiver_requests_total":
                    requests += sample.value
                    errors += sample.value if labels.get("code") in SERVER_ERRORS else 0.0
                elif sample.name == "quiver_request_latency_seconds_bucket":
                    bound = float(labels["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return Sample(requests, errors, buckets)


def scrape_shadow(urls: list[str], model: str, version: str, reference: str, timeout_s: float = 5.0) -> ShadowSample:
    """The version's Shadow-step counters against `reference`, summed over these routers' /metrics pages."""
    counts = {"calls": 0.0, "errors": 0.0, "rows": 0.0, "agreed": 0.0, "shed": 0.0}
    buckets: dict[float, float] = {}
    for url in urls:
        for family in _families(url, timeout_s):
            for sample in family.samples:
                labels = sample.labels
                if sample.name == "quiver_shadow_shed_total" and (labels.get("model"), labels.get("version")) == (model, version):
                    counts["shed"] += sample.value  # at weight 0 the version answers no client: its sheds are the mirrors'
                    continue
                if (labels.get("model"), labels.get("version"), labels.get("reference_version")) != (model, version, reference):
                    continue
                if sample.name == "quiver_shadow_step_calls_total":
                    counts["calls"] += sample.value
                    counts["errors"] += sample.value if labels.get("outcome") != "ok" else 0.0
                elif sample.name == "quiver_shadow_step_rows_total":
                    counts["rows"] += sample.value
                elif sample.name == "quiver_shadow_step_agreed_total":
                    counts["agreed"] += sample.value
                elif sample.name == "quiver_shadow_step_latency_seconds_bucket":
                    bound = float(labels["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return ShadowSample(buckets=buckets, **counts)


def routed_versions(urls: list[str], model: str, timeout_s: float = 5.0) -> set[str]:
    """The model's versions that any of these routers still has in its route table."""
    versions: set[str] = set()
    for url in urls:
        for family in _families(url, timeout_s):
            versions.update(
                sample.labels["version"]
                for sample in family.samples
                if sample.name == "quiver_route_weight" and sample.labels.get("model") == model
            )
    return versions


def judge(before: Sample, after: Sample, gates: Gates) -> Verdict:
    requests = after.requests - before.requests
    if requests < gates.min_requests:  # also a router restart (counters back at zero)
        return Verdict(Outcome.WAIT, f"{max(requests, 0):.0f} requests so far, {gates.min_requests} needed to judge")
    return _errors_and_latency(requests, after.errors - before.errors, before.buckets, after.buckets, gates, "requests")


def judge_shadow(before: ShadowSample, after: ShadowSample, gates: Gates, shadow: ShadowStep) -> Verdict:
    """The Shadow step's verdict: the mirrored calls' errors and p99 once there are `minRequests`
    (only calls that succeed give rows, so a version that always fails is judged on its calls), then
    the rows' agreement once there are `minSamples`."""
    calls, rows = after.calls - before.calls, after.rows - before.rows
    if calls < gates.min_requests:
        shed = after.shed - before.shed
        shedding = f"; {shed:.0f} mirrors shed (quiver_shadow_shed_total: queue full or loaded)" if shed > 0 else ""
        return Verdict(Outcome.WAIT, f"{max(calls, 0):.0f} mirrored calls so far, {gates.min_requests} needed to judge{shedding}")
    verdict = _errors_and_latency(calls, after.errors - before.errors, before.buckets, after.buckets, gates, "mirrored calls")
    if verdict.outcome is Outcome.BREACH:
        return verdict
    if rows < shadow.min_samples:
        return dataclasses.replace(
            verdict, outcome=Outcome.WAIT, rows=max(rows, 0.0),
            message=f"{max(rows, 0):.0f} rows compared so far, {shadow.min_samples} needed to judge the agreement ({verdict.message})",
        )
    agreed = min(max(after.agreed - before.agreed, 0.0), rows)
    agreement, lower = agreed / rows, wilson_lower(agreed, rows)
    numbers = f"agreement {agreement:.4f}, 95% lower bound {lower:.4f}, over {rows:.0f} rows"
    calls_message = verdict.message
    verdict = dataclasses.replace(verdict, message=f"{numbers}; {calls_message}", agreement=agreement, lower_bound=lower, rows=rows)
    if verdict.outcome is Outcome.PASS and gates.min_agreement is not None and lower < gates.min_agreement:
        message = f"{numbers}: below minAgreement {gates.min_agreement:g} ({calls_message})"
        return dataclasses.replace(verdict, outcome=Outcome.BREACH, message=message)
    return verdict


def _errors_and_latency(
    count: float, errors: float, before: dict[float, float], after: dict[float, float], gates: Gates, what: str
) -> Verdict:
    error_rate = errors / count
    p99 = _quantile(0.99, {le: n - before.get(le, 0.0) for le, n in after.items()})
    p99_ms = None if p99 is None else p99 * 1000
    measured = f"{count:.0f} {what}, error rate {error_rate:.2%}, p99 " + ("n/a" if p99_ms is None else f"{p99_ms:.1f} ms")
    if error_rate > gates.max_error_rate:
        return Verdict(Outcome.BREACH, f"error rate {error_rate:.2%} above {gates.max_error_rate:.2%} ({measured})", count, error_rate, p99_ms)
    if gates.max_p99_latency_ms is not None and p99_ms is not None and p99_ms > gates.max_p99_latency_ms:
        return Verdict(
            Outcome.BREACH, f"p99 {p99_ms:.1f} ms above {gates.max_p99_latency_ms:g} ms ({measured})", count, error_rate, p99_ms
        )
    return Verdict(Outcome.PASS, measured, count, error_rate, p99_ms)


def _quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile: linear within the bucket that holds the q-th observation."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # beyond the last finite bound: its value is all that is known
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return bounds[-1]


def _families(url: str, timeout_s: float) -> list:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return list(text_string_to_metric_families(response.read().decode()))
