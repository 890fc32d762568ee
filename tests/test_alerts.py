"""The chart's alert rules (helm/quiver/files/alerts.yaml), checked by Debian's promtool.

`promtool check rules` parses every expression; `promtool test rules` runs
tests/prometheus/alerts_test.yaml, which must hold, for every alert, a case where it fires and
one where it stays quiet. The chart ships the same file as a PrometheusRule's spec.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests import helm_chart as hc
from tests import prometheus_tools as pt


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([pt.binary("promtool"), *args], capture_output=True, text=True, timeout=120)


def test_promtool_checks_the_rules() -> None:
    result = _promtool("check", "rules", str(pt.RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in pt.rule_groups())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = _promtool("test", "rules", str(pt.RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in yaml.safe_load(pt.RULE_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    alerts = set(pt.alerts())
    assert alerts - firing == set(), "alerts never seen firing"
    assert alerts - quiet == set(), "alerts never seen staying quiet"
    assert (firing | quiet) <= alerts, "tests of alerts that do not exist"


def test_every_alert_has_a_severity_and_says_what_to_do() -> None:
    for name, rule in pt.alerts().items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        summary = rule["annotations"]["summary"]
        # A summary names what to look at or change: a command, a panel, or a spec field.
        assert any(word in summary for word in ("kubectl", "dashboard", "spec.", "Raise", "Check")), (name, summary)


def test_the_chart_ships_the_rules_as_a_prometheusrule(tmp_path: Path) -> None:
    assert hc.by_kind(hc.render([]), "PrometheusRule") == [], "off by default"
    values = {"prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}}
    objects = hc.render(hc.value_args(values, tmp_path))
    rule = hc.one(objects, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["metadata"]["labels"]["app.kubernetes.io/part-of"] == "quiver"
    # The file as promtool checked it, {{ $labels }} templates untouched by Helm.
    assert rule["spec"] == yaml.safe_load(pt.RULES.read_text())
    result = hc.helm("lint", "--strict", hc.CHART, *hc.value_args(values, tmp_path))
    assert "0 chart(s) failed" in result.stdout
