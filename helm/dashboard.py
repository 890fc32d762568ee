"""Quiver's Grafana dashboard, as code: writes helm/quiver/files/dashboard.json.

The chart ships the JSON this writes (templates/grafana-dashboard-configmap.yaml); run
`.venv/bin/python helm/dashboard.py` after changing a panel and commit both.
tests/test_dashboard.py checks that the committed JSON is what this produces, and
tests/test_prometheus_live.py runs every panel's query against a real Prometheus scraping a
live `quiver router`, as the chart runs it. Every query reads the router's metrics (router/metrics.py).

It lives beside the chart it writes into, outside the `quiver` package: nothing at run time
uses it, and its library is a development dependency (pyproject's `test` extra).
The library is Grafana's own grafana-foundation-sdk: its builders are generated from
Grafana's dashboard schema and released with Grafana, where grafanalib (the other choice) has
had no release since January 2024.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import common, dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import LegendDisplayMode, LegendPlacement
from grafana_foundation_sdk.models.dashboard import DataSourceRef, DashboardCursorSync, VariableRefresh, VariableSort

OUTPUT = Path(__file__).resolve().parent / "quiver" / "files" / "dashboard.json"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"

# Label filters from the dashboard's variables, for metrics labelled per variant, per version
# and per model only.
VARIANT = 'model=~"$model",version=~"$version",variant=~"$variant",pool=~"$pool"'
VERSION = 'model=~"$model",version=~"$version"'
MODEL = 'model=~"$model"'
BY_VARIANT = "model, version, variant, pool"
VARIANT_LEGEND = "{{model}}:{{version}} {{variant}} ({{pool}})"


def _rate(metric: str, labels: str, by: str) -> str:
    return f"sum by ({by}) (rate({metric}{{{labels}}}[{RATE}]))"


def _or_zero(expr: str, by: str, base: str = "quiver_requests_total", labels: str = VARIANT) -> str:
    """`expr`, or 0 for every series of `base` it does not cover: a counter labelled by a rare
    event (shedding, an error code) exists only once the event happened, and a panel should show 0."""
    return f"{expr}\nor\n{_rate(base, labels, by)} * 0"


def _quantile(q: float, metric: str) -> str:
    return f"histogram_quantile({q}, sum by ({BY_VARIANT}, le) (rate({metric}_bucket{{{VARIANT}}}[{RATE}])))"


def _query(expr: str, legend: str) -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend)


def _timeseries(title: str, description: str, unit: str, *queries: prometheus.Dataquery, width: int = 12) -> timeseries.Panel:
    legend = common.VizLegendOptions().show_legend(True).display_mode(LegendDisplayMode.TABLE).placement(LegendPlacement.BOTTOM).calcs(["lastNotNull", "max"])
    panel = (
        timeseries.Panel().title(title).description(description).unit(unit).datasource(DATASOURCE).span(width).height(8).legend(legend)
    )
    for ref, query in zip("ABCDEFGH", queries):
        panel = panel.with_target(query.ref_id(ref))
    return panel


def _variable(name: str, query: str) -> dashboard.QueryVariable:
    return (
        dashboard.QueryVariable(name)
        .label(name)
        .query(query)
        .datasource(DATASOURCE)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
    )


def traffic() -> list[timeseries.Panel]:
    return [
        _timeseries(
            "Requests per second", "Dispatched requests, per model, version, variant and pool.", "reqps",
            _query(_rate("quiver_requests_total", VARIANT, BY_VARIANT), VARIANT_LEGEND),
        ),
        _timeseries(
            "Requests per second by protocol", "Dispatched requests through each door: gRPC or REST.", "reqps",
            _query(_rate("quiver_requests_total", VARIANT, "model, protocol"), "{{model}} {{protocol}}"),
        ),
        _timeseries(
            "Failed requests per second", "Dispatched requests that did not end OK, by gRPC status.", "reqps",
            _query(
                _or_zero(_rate("quiver_requests_total", f'{VARIANT},code!="OK"', f"{BY_VARIANT}, code"), BY_VARIANT),
                VARIANT_LEGEND + " {{code}}",
            ),
        ),
        _timeseries(
            "Refused requests per second",
            "Requests refused before a variant was chosen (unknown model, bad input, no variant ready, shed), by gRPC status.",
            "reqps",
            _query(
                _or_zero(_rate("quiver_rejected_requests_total", MODEL, "model, code"), "model", labels=VARIANT),
                "{{model}} {{code}}",
            ),
        ),
    ]


def latency() -> list[timeseries.Panel]:
    panels = []
    for q, name in ((0.5, "p50"), (0.99, "p99")):
        panels.append(
            _timeseries(
                f"Latency {name} and its replica parts",
                f"{name} from dispatch to answer, and of the time the replica spent queueing before its batch ran "
                "and computing it (ONNX Runtime); the rest is the router and the hop.",
                "s",
                _query(_quantile(q, "quiver_request_latency_seconds"), f"{VARIANT_LEGEND} total"),
                _query(_quantile(q, "quiver_replica_queue_seconds"), f"{VARIANT_LEGEND} queue"),
                _query(_quantile(q, "quiver_replica_compute_seconds"), f"{VARIANT_LEGEND} compute"),
            )
        )
    return panels


def routing() -> list[timeseries.Panel]:
    decisions = _rate("quiver_routing_decisions_total", VARIANT, "model, reason")
    return [
        _timeseries(
            "Routing decisions by reason", "Why the policy chose each request's variant "
            "(default, most-accurate, budget, best-effort, explore, pinned, spill-over, retry).", "reqps",
            _query(decisions, "{{model}} {{reason}}"),
        ),
        _timeseries(
            "Spill-over and shedding",
            "Requests sent to another variant because the chosen one's queue was full (spill-over), and "
            "requests refused because every allowed variant's queue was full (shed, RESOURCE_EXHAUSTED).",
            "reqps",
            _query(
                _or_zero(_rate("quiver_routing_decisions_total", f'{VARIANT},reason="spill-over"', BY_VARIANT), BY_VARIANT),
                f"{VARIANT_LEGEND} spill-over",
            ),
            _query(
                _or_zero(_rate("quiver_rejected_requests_total", f'{MODEL},code="RESOURCE_EXHAUSTED"', "model"), "model"),
                "{{model}} shed",
            ),
        ),
        _timeseries(
            "Calls to replicas by path",
            "Calls on the replicas' own data plane (direct) or through Serve's handles (serve): "
            "serve rising while direct falls means the replica directory is lost.",
            "reqps",
            _query(_rate("quiver_replica_calls_total", VARIANT, f"{BY_VARIANT}, path"), VARIANT_LEGEND + " {{path}}"),
        ),
        _timeseries(
            "Latency prediction error",
            "Median |predicted - observed| / observed latency of answered requests: how well the policy's budget "
            "decisions can work. Lower with a quiver tune profile; rising means the profile no longer fits the replicas.",
            "percentunit",
            _query(_quantile(0.5, "quiver_prediction_error"), VARIANT_LEGEND),
        ),
    ]


def replicas() -> list[timeseries.Panel]:
    """What the routers know of each variant's replicas (router/state_metrics.py): a variant that is not
    ready shows here even when it gets no traffic."""
    return [
        _timeseries(
            "Variants ready",
            "1 while the variant can answer (a replica runs and answers the probes), on the router that sees the least: "
            "0 means requests go to other variants, or are refused.",
            "short",
            _query(f"min by ({BY_VARIANT}) (quiver_variant_ready{{{VARIANT}}})", VARIANT_LEGEND),
            width=6,
        ),
        _timeseries(
            "Replicas per variant", "Replicas that run: Serve's count, or the replica directory's when it lists more.", "short",
            _query(f"max by ({BY_VARIANT}) (quiver_variant_replicas{{{VARIANT}}})", VARIANT_LEGEND),
            width=6,
        ),
        _timeseries(
            "Probe failures per second", "The routers' probes (a round trip that runs nothing) that got no answer in time: "
            "a variant missing two in a row is routed around.", "short",
            _query(_rate("quiver_probe_failures_total", VARIANT, BY_VARIANT), VARIANT_LEGEND),
            width=6,
        ),
        _timeseries(
            "Replica directory reachable", "1 per router whose last read of the replica directory succeeded; 0: new "
            "replicas are not called on their data plane.", "short",
            _query("min by (instance) (quiver_replica_directory_up)", "{{instance}}"),
            width=6,
        ),
    ]


def batching() -> list[timeseries.Panel]:
    return [
        _timeseries(
            "Batch size (p50, p99)", "Requests in the replica batch that served a request.", "short",
            _query(_quantile(0.5, "quiver_batch_requests"), f"{VARIANT_LEGEND} p50"),
            _query(_quantile(0.99, "quiver_batch_requests"), f"{VARIANT_LEGEND} p99"),
            width=8,
        ),
        _timeseries(
            "Requests per call to a replica (p50)", "Requests the router coalesced into one call.", "short",
            _query(_quantile(0.5, "quiver_call_requests"), VARIANT_LEGEND),
            width=8,
        ),
        _timeseries(
            "Requests in flight", "Dispatched and not yet answered: the router's view of each variant's queue.", "short",
            _query(f"sum by ({BY_VARIANT}) (quiver_in_flight_requests{{{VARIANT}}})", VARIANT_LEGEND),
            width=8,
        ),
    ]


def live_accuracy() -> list[timeseries.Panel]:
    """Shadow comparisons with each version's reference variant (router/shadow.py)."""
    shadow = 'model=~"$model",version=~"$version",variant=~"$variant"'
    by = "model, version, variant"
    legend = "{{model}}:{{version}} {{variant}}"
    return [
        _timeseries(
            "Live agreement with the reference",
            "Share of sampled live rows on which the variant answers as the reference (fp32) does, over the "
            "last window, and its 95 % lower bound (what routing counts).",
            "percentunit",
            _query(f"max by ({by}) (quiver_shadow_agreement{{{shadow}}})", f"{legend} agreement"),
            _query(f"min by ({by}) (quiver_shadow_agreement_lower_bound{{{shadow}}})", f"{legend} lower bound"),
        ),
        _timeseries(
            "Rows the agreement is over", "Sampled rows in each variant's window: routing uses live accuracy past min_samples.",
            "short",
            _query(f"max by ({by}) (quiver_shadow_agreement_samples{{{shadow}}})", legend),
        ),
        _timeseries(
            "Drifted variants", "1 while a variant's live accuracy is more than its margin below the offline one.", "short",
            _query(f"max by ({by}) (quiver_shadow_drifted{{{shadow}}})", legend),
        ),
        _timeseries(
            "Shadow comparisons and calls shed",
            "Rows compared per second, and shadow calls not made (queue full, reference loaded, error).", "short",
            _query(_rate("quiver_shadow_comparisons_total", shadow, by), f"{legend} compared"),
            _query(
                _or_zero(_rate("quiver_shadow_shed_total", shadow, f"{by}, reason"), by, "quiver_shadow_comparisons_total", shadow),
                legend + " shed {{reason}}",
            ),
        ),
        _timeseries(
            "Rows captured and segments dropped",
            "Rows the routers capture for recalibration (--capture, the chart's router.capture, a model's spec.capture), "
            "and segments not written: over the bound, or refused by the disk.", "short",
            _query(_rate("quiver_capture_rows_total", VERSION, "model, version"), "{{model}}:{{version}} rows"),
            _query(f"max by (model, version) (quiver_capture_dropped_segments{{{VERSION}}})", "{{model}}:{{version}} dropped"),
        ),
    ]


def rollout() -> list:
    # A version in its Shadow step serves no client: it has no quiver_requests_total for $version to list.
    step, by = MODEL, "model, version, variant, reference_version"
    legend = "{{model}}:{{version}} {{variant}} against {{reference_version}}"
    return [
        _timeseries(
            "Version weights", "Each version's share of the model's traffic in the routers' route table: "
            "a rollout moves it step by step; a rollback drops the new version out.", "percent",
            _query(f"max by (model, version) (quiver_route_weight{{{VERSION}}})", "{{model}}:{{version}}"),
            width=16,
        ),
        stat.Panel()
        .title("Versions in traffic")
        .description("More than one: a rollout is under way.")
        .datasource(DATASOURCE)
        .span(8)
        .height(8)
        .with_target(
            _query(f"count by (model) (max by (model, version) (quiver_route_weight{{{VERSION}}} > 0))", "{{model}}").ref_id("A")
        ),
        _timeseries(
            "Shadow step: agreement with the serving version",
            "A version in its rollout's Shadow step: share of mirrored rows on which it answers as the serving version "
            "did (the operator gates the step's lower bound on spec.rollout.gates.minAgreement).", "percentunit",
            _query(f"{_rate('quiver_shadow_step_agreed_total', step, by)}\n/\n{_rate('quiver_shadow_step_rows_total', step, by)}", legend),
        ),
        _timeseries(
            "Shadow step: mirrored calls and p99",
            "Mirrored calls per second by outcome (every failure counts against the new version), and their p99 in seconds.",
            "short",
            _query(_rate("quiver_shadow_step_calls_total", step, f"{by}, outcome"), legend + " {{outcome}}"),
            _query(
                f"histogram_quantile(0.99, sum by ({by}, le) (rate(quiver_shadow_step_latency_seconds_bucket{{{step}}}[{RATE}])))",
                legend + " p99 s",
            ),
        ),
    ]


def build() -> dict:
    board = (
        dashboard.Dashboard("Quiver")
        .uid("quiver")
        .description(
            "Quiver's routers: traffic, errors, latency, routing, replicas, batching, live accuracy and rollouts per model version and variant."
        )
        .tags(["quiver"])
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .refresh("30s")
        .time("now-1h", "now")
        .with_variable(dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
        .with_variable(_variable("model", "label_values(quiver_requests_total, model)"))
        .with_variable(_variable("version", 'label_values(quiver_requests_total{model=~"$model"}, version)'))
        .with_variable(_variable("variant", 'label_values(quiver_requests_total{model=~"$model",version=~"$version"}, variant)'))
        .with_variable(_variable("pool", 'label_values(quiver_requests_total{model=~"$model"}, pool)'))
    )
    ids = itertools.count(1)
    for title, panels in (
        ("Traffic and errors", traffic()),
        ("Latency", latency()),
        ("Routing", routing()),
        ("Replicas", replicas()),
        ("Batching and queues", batching()),
        ("Live accuracy", live_accuracy()),
        ("Rollout", rollout()),
    ):
        board = board.with_row(dashboard.Row(title).id(next(ids)))
        for panel in panels:
            board = board.with_panel(panel.id(next(ids)))
    return json.loads(JSONEncoder(sort_keys=True).encode(board.build()))


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    OUTPUT.write_text(render())
    sys.stdout.write(f"wrote {OUTPUT}\n")
