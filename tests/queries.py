"""The PromQL the chart ships: every dashboard panel's query and every rule's expression, and
what each reads (metric names, and the labels it matches or groups by), found with promql-parser.

Grafana's variables are replaced by what "All" selects, so Prometheus can run the queries as they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import promql_parser

# What the dashboard's variables hold when "All" is selected, and a rate window for a 1 s scrape.
GRAFANA_VARIABLES = {"$model": ".*", "$version": ".*", "$variant": ".*", "$pool": ".*", "$__rate_interval": "30s"}


@dataclass(frozen=True)
class Query:
    where: str  # panel title and refId, or rule name
    expr: str


def as_prometheus_runs_it(expr: str) -> str:
    """A panel's query with Grafana's variables replaced by what "All" selects."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def dashboard_queries(dashboard: dict[str, Any]) -> list[Query]:
    return [
        Query(f"panel {panel['title']!r} {target['refId']}", as_prometheus_runs_it(target["expr"]))
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def _nodes(node: Any) -> Iterator[Any]:
    yield node
    for attribute in ("expr", "lhs", "rhs", "param", "vector_selector"):
        child = getattr(node, attribute, None)
        if child is not None and not isinstance(child, (str, int, float)):
            yield from _nodes(child)
    for child in getattr(node, "args", None) or []:
        yield from _nodes(child)


def metrics_read(expr: str) -> set[str]:
    return {node.name for node in _nodes(promql_parser.parse(expr)) if isinstance(node, promql_parser.VectorSelector) and node.name}


def selectors(expr: str) -> dict[str, set[str]]:
    """{metric: labels its selectors match on} for every vector selector in `expr`."""
    found: dict[str, set[str]] = {}
    for node in _nodes(promql_parser.parse(expr)):
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            found.setdefault(node.name, set()).update(m.name for m in node.matchers.matchers if m.name != "__name__")
    return found


def grouping_labels(expr: str) -> set[str]:
    """Labels named in by (...) and on (...) clauses."""
    labels: set[str] = set()
    for node in _nodes(promql_parser.parse(expr)):
        modifier = getattr(node, "modifier", None)
        if modifier is None:
            continue
        names = getattr(modifier, "labels", None)
        matching = getattr(modifier, "matching", None)
        if names is None and matching is not None:
            names = getattr(matching, "labels", None)
        labels.update(names or ())
        labels.update(getattr(modifier, "group_labels", None) or ())
    return labels
