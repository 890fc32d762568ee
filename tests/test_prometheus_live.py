"""The dashboard and the alert rules against a real Prometheus scraping a live Quiver router.

The router is the one the chart runs: `quiver router` on a Ray head (tests/raycluster.py),
serving the example model's versions 1 and 2 from a routes file that splits them 90/10, as
the operator does mid-rollout; version 1 also has a variant `copy` (the same file) whose every
request is compared with the fp32 reference (shadow sample rate 1), for the live-accuracy panels;
version 3 is in its rollout's Shadow step, mirroring every request version 1 answers, and the
router captures every request, for the Shadow step's and the capture's panels.
Debian's Prometheus runs on loopback from a temporary directory, scrapes the router's /metrics
every second and evaluates the chart's rule file, while the test sends a short, bounded load
over gRPC and REST: answered requests (some pinned to `copy`), a few whose deadline passes (a server error, so the
error-ratio rules have something to divide) and a few for a model that does not exist (refused).
Then, through Prometheus's HTTP API:

- every dashboard panel's query parses and returns series;
- every rule evaluates without error, and every recording rule returns series;
- every metric and label a panel or an alert reads exists in what was scraped (alerts may
  rightly return nothing while all is well, so that is what is checked for them).
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton
from prometheus_client import Counter
from prometheus_client.metrics import MetricWrapperBase

from quiver.operator.serve_api import ServeApi
from quiver.router.metrics import RouterMetrics
from quiver.serving import Replicas, VariantApp, build_example, from_onnx_file, write_version
from quiver.serving.manifest import Shadow
from tests import prometheus_tools as pt
from tests import helm_scripts
from tests.queries import Query, as_prometheus_runs_it, dashboard_queries, grouping_labels, selectors

from .raycluster import ray_head
from .serverproc import ServerProcess, quiver_process

DASHBOARD = pt.ROOT / "helm" / "quiver" / "files" / "dashboard.json"
ROUNDS = 12
GRPC_REQUESTS, REST_REQUESTS, PINNED, LATE, UNKNOWN = 120, 36, 24, ROUNDS // 2, ROUNDS // 2


def _rest(url: str, model: str, parameters: dict[str, Any] | None = None, version: str = "") -> int:
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}
    if parameters:
        body["parameters"] = parameters
    path = f"{model}/versions/{version}" if version else model
    request = urllib.request.Request(
        f"{url}/v2/models/{path}/infer", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _load(address: str, http_url: str) -> dict[str, list[int]]:
    """The load, spread over ROUNDS seconds so that the panels' rates have a shape."""
    x = np.random.default_rng(3).standard_normal((1, 64)).astype(np.float32)

    def grpc_call(_: int) -> None:
        client = triton.InferenceServerClient(address)
        tensor = triton.InferInput("input", [1, 64], "FP32")
        tensor.set_data_from_numpy(x)
        client.infer("example", [tensor])

    statuses: dict[str, list[int]] = {"ok": [], "late": [], "unknown": []}
    with ThreadPoolExecutor(8) as pool:
        for round_ in range(ROUNDS):
            list(pool.map(grpc_call, range(GRPC_REQUESTS // ROUNDS)))
            statuses["ok"] += pool.map(lambda _: _rest(http_url, "example"), range(REST_REQUESTS // ROUNDS))
            statuses["ok"] += pool.map(
                lambda _: _rest(http_url, "example", {"quiver.variant": "copy"}, "1"), range(PINNED // ROUNDS)
            )
            if round_ % 2:
                statuses["late"].append(_rest(http_url, "example", {"timeout": 1}))  # 1 µs: past before dispatch
                statuses["unknown"].append(_rest(http_url, "no-such-model"))
            time.sleep(1)
    return statuses


def _wait_for(what: str, check, timeout_s: float = 120) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def _declared_labels() -> dict[str, set[str]]:
    """Label names of each metric router/metrics.py declares, by exposed family name (`_total` for counters)."""
    declared = {}
    for family in vars(RouterMetrics()).values():
        if isinstance(family, MetricWrapperBase):
            # prometheus_client keeps the names only privately; a labelled family shows none until a child exists.
            name = family._name + ("_total" if isinstance(family, Counter) else "")  # noqa: SLF001
            declared[name] = set(family._labelnames)  # noqa: SLF001
    return declared


class Scraped:
    """What Prometheus holds: each metric's label names; recorded metrics resolve to their rule's reads."""

    def __init__(self, prometheus: pt.Prometheus, recorded: dict[str, str]) -> None:
        self._prometheus = prometheus
        self._recorded = recorded
        self._labels: dict[str, set[str]] = {}
        self._declared = _declared_labels()

    def labels(self, metric: str) -> set[str]:
        if metric not in self._labels:
            series = self._prometheus.api("series", **{"match[]": metric})
            if series:
                self._labels[metric] = {name for labels in series for name in labels} - {"__name__"}
            else:
                # A labelled metric has no series until its first event (a drift, a shed shadow call), but
                # the router exports its HELP and TYPE from the start: Prometheus must have scraped those,
                # and its labels are the ones the router declares.
                family = metric.removesuffix("_total")  # OpenMetrics, which Prometheus asks for, names counters without it
                assert self._prometheus.api("metadata", metric=family), f"no series of {metric}, nor its metadata"
                assert metric in self._declared, f"no series of {metric}, and the router declares no such metric"
                self._labels[metric] = self._declared[metric] | {"instance", "job"}
        return self._labels[metric]

    def check_reads(self, query: Query) -> None:
        """Every metric `query` reads exists, with the labels it matches on; every label it groups
        or matches by is on some metric it reads."""
        available: set[str] = set()
        for metric, matched in selectors(query.expr).items():
            if metric in self._recorded:  # a recording rule: what it reads, and what it keeps
                self.check_reads(Query(f"{query.where} → {metric}", self._recorded[metric]))
                available |= grouping_labels(self._recorded[metric])
                continue
            labels = self.labels(metric)
            assert matched <= labels, f"{query.where}: {metric} has no label {sorted(matched - labels)}"
            available |= labels
        missing = grouping_labels(query.expr) - available
        assert not missing, f"{query.where}: groups or matches by {sorted(missing)}, which nothing it reads has"


@contextmanager
def cluster_router(directory: Path) -> Iterator[ServerProcess]:
    """`quiver router` serving example versions 1 (90 %; fp32 and its shadowed copy) and 2 (10 %) from a Ray head,
    version 3 in its Shadow step against version 1."""
    store, apps = directory / "store", []
    for version in ("1", "2", "3"):
        signature = from_onnx_file(build_example(store / "example" / version / "model.onnx")).manifest
        fp32 = signature.variants[0].model_copy(update={"replicas": Replicas(num_cpus=0.4)})
        copy = fp32.model_copy(update={"name": "copy", "shadow": Shadow(sample_rate=1.0)})
        variants = [fp32, copy] if version == "1" else [fp32]
        write_version(store, signature.model_copy(update={"name": "example", "version": version, "variants": variants}))
        apps += [VariantApp(store=store, model="example", version=version, variant=v.name) for v in variants]
    routes = directory / "routes.json"
    routes.write_text(json.dumps({
        "models": {"example": {"1": 90, "2": 10, "3": 0}}, "shadow": {"example": {"3": {"of": "1", "sample_rate": 1.0}}},
    }))
    with ray_head(num_cpus=2) as head:
        serve = ServeApi(head.dashboard_url, head.env["RAY_AUTH_TOKEN"])
        serve.put_apps([app.config() for app in apps])
        _wait_for(
            "every variant's application to run",
            lambda: all(serve.statuses().get(app.name) == "RUNNING" for app in apps),
        )
        args = ("--ray-address", head.gcs_address, "--store", str(store), "--routes", str(routes),
                "--capture", str(directory / "capture"), "--capture-rate", "1")
        with quiver_process("router", *args, env={**os.environ, **head.env}) as router:
            yield router


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[pt.Prometheus, dict[str, list[int]], float]]:
    """Prometheus, what the load got back, and when the load began (unix time)."""
    directory = tmp_path_factory.mktemp("prometheus")
    with cluster_router(directory) as server:
        target = urllib.parse.urlsplit(server.metrics_url).netloc
        with pt.prometheus_server([target], directory) as prometheus:
            _wait_for("the router's target to be up", lambda: prometheus.query('up{job="quiver-router"} == 1'))
            # One answered request first, so that the counters exist before the load (a series that
            # first appears already counting shows no rate for what it counted).
            assert _rest(server.http_url, "example") == 200
            _wait_for("the first request in Prometheus", lambda: prometheus.query("quiver_requests_total"))
            began = time.time()
            statuses = _load(server.address, server.http_url)
            answered = 1 + GRPC_REQUESTS + REST_REQUESTS + PINNED
            _wait_for(
                f"{answered} answered requests in Prometheus",
                lambda: [r for r in prometheus.query('sum(quiver_requests_total{code="OK"})') if float(r["value"][1]) >= answered],
            )
            recorded = [rule["record"] for group in pt.rule_groups() for rule in group["rules"] if "record" in rule]
            # Rules are evaluated every second: wait until each recording rule has output.
            _wait_for("every recording rule's series", lambda: all(prometheus.query(name) for name in recorded))
            _wait_for("shadow comparisons of copy", lambda: prometheus.query('quiver_shadow_comparisons_total{variant="copy"} > 0'))
            _wait_for("version 3's Shadow step", lambda: prometheus.query('quiver_shadow_step_rows_total{version="3"} > 0'))
            yield prometheus, statuses, began


def test_the_load_got_the_answers_it_was_built_for(scraped) -> None:
    _, statuses, _ = scraped
    assert statuses["ok"] == [200] * (REST_REQUESTS + PINNED)
    assert statuses["late"] == [504] * LATE
    assert statuses["unknown"] == [404] * UNKNOWN


def test_every_panel_query_returns_series(scraped) -> None:
    prometheus, _, _ = scraped
    queries = dashboard_queries(json.loads(DASHBOARD.read_text()))
    assert len(queries) >= 15
    empty = [query.where for query in queries if not prometheus.query(query.expr)]
    assert empty == [], "panels with no data"


def test_every_panel_reads_metrics_and_labels_that_exist(scraped) -> None:
    prometheus, _, _ = scraped
    scraped_metrics = Scraped(prometheus, {})
    for query in dashboard_queries(json.loads(DASHBOARD.read_text())):
        scraped_metrics.check_reads(query)


def test_every_dashboard_variable_has_values(scraped) -> None:
    prometheus, _, _ = scraped
    for variable in json.loads(DASHBOARD.read_text())["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((?P<selector>.+), (?P<label>\w+)\)", variable["query"])
        assert match, variable["query"]
        selector = match["selector"].replace("$model", ".*").replace("$version", ".*")
        values = prometheus.api(f"label/{match['label']}/values", **{"match[]": selector})
        assert values, f"variable {variable['name']}: {variable['query']} has no values"


def test_every_rule_evaluates_and_recording_rules_return_series(scraped) -> None:
    prometheus, _, _ = scraped
    groups = prometheus.api("rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == sum(len(group["rules"]) for group in pt.rule_groups()), "Prometheus did not load every rule"
    assert [(rule["name"], rule["lastError"]) for rule in rules if rule["health"] != "ok"] == []
    for group in pt.rule_groups():
        for rule in group["rules"]:
            result = prometheus.query(rule["expr"])  # parses, or raises with Prometheus's message
            if "record" in rule:
                assert {r["metric"]["model"] for r in result} == {"example"}, rule["record"]


def test_every_alert_reads_metrics_and_labels_that_exist(scraped) -> None:
    prometheus, _, _ = scraped
    recorded = {rule["record"]: rule["expr"] for group in pt.rule_groups() for rule in group["rules"] if "record" in rule}
    scraped_metrics = Scraped(prometheus, recorded)
    for name, rule in pt.alerts().items():
        scraped_metrics.check_reads(Query(f"alert {name}", rule["expr"]))


def test_the_check_catches_a_misspelt_label_or_metric(scraped) -> None:
    prometheus, _, _ = scraped
    check = Scraped(prometheus, {})
    with pytest.raises(AssertionError, match="groups or matches by"):
        check.check_reads(Query("typo", "sum by (modle) (rate(quiver_requests_total[30s]))"))
    with pytest.raises(AssertionError, match="has no label"):
        check.check_reads(Query("typo", 'quiver_route_weight{variant="fp32"}'))
    with pytest.raises(AssertionError, match="no series of quiver_request_total, nor its metadata"):
        check.check_reads(Query("typo", "rate(quiver_request_total[30s])"))


def test_every_row_draws_as_a_png(scraped, tmp_path: Path) -> None:
    """What the dashboard shows, drawn from the same queries (docs/images/dashboard/ holds a run's pictures:
    QUIVER_DASHBOARD_PNGS=docs/images/dashboard pytest tests/test_prometheus_live.py)."""
    prometheus, _, began = scraped
    directory = Path(os.environ.get("QUIVER_DASHBOARD_PNGS") or tmp_path)
    start, end = began - 5, time.time()

    def query_range(expr: str) -> list[dict[str, Any]]:
        return prometheus.api("query_range", query=as_prometheus_runs_it(expr), start=f"{start:.3f}", end=f"{end:.3f}", step="1")["result"]

    png = helm_scripts.load("dashboard_png")
    dashboard = json.loads(DASHBOARD.read_text())
    drawn = png.render(dashboard, query_range, directory, since=began)
    assert [path.name for path in drawn] == [f"{re.sub(r'[^a-z0-9]+', '-', title.lower())}.png" for title, _ in png.rows(dashboard)]
    for path, lines in drawn.items():
        assert lines > 0 and path.read_bytes().startswith(b"\x89PNG"), path
