"""The dashboard's rows drawn as PNGs (matplotlib) from a Prometheus's answers to its queries.

There is no Grafana here to take a screenshot with; this draws, for each row of
helm/quiver/files/dashboard.json, every panel's queries over a time range as Grafana would,
lines labelled by the panel's legend format. tests/test_prometheus_live.py calls it on the
data of its live router, and writes the pictures into docs/images/dashboard/ when
QUIVER_DASHBOARD_PNGS names that folder.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402 - after the backend is chosen

# A range query's answer: [{"metric": {label: value}, "values": [[unix seconds, "value"], ...]}, ...]
RangeQuery = Callable[[str], list[dict[str, Any]]]
_UNITS = {"reqps": "requests/s", "s": "seconds", "percent": "%", "percentunit": "share", "short": ""}


def rows(dashboard: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """(row title, its panels) in the dashboard's order."""
    found: list[tuple[str, list[dict[str, Any]]]] = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            found.append((panel["title"], []))
        else:
            found[-1][1].append(panel)
    return found


def _legend(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m[1], ""), template)


def render(dashboard: dict[str, Any], query_range: RangeQuery, directory: Path, since: float) -> dict[Path, int]:
    """One PNG per row in `directory`, named after the row, time in seconds from `since` (unix time);
    returns each file and how many lines it drew."""
    directory.mkdir(parents=True, exist_ok=True)
    drawn: dict[Path, int] = {}
    for title, panels in rows(dashboard):
        figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 3.6), squeeze=False)
        lines = 0
        for ax, panel in zip(axes[0], panels):
            for target in panel["targets"]:
                for series in query_range(target["expr"]):
                    times = [float(t) - since for t, _ in series["values"]]
                    ax.plot(times, [float(v) for _, v in series["values"]], label=_legend(target["legendFormat"], series["metric"]))
                    lines += 1
            ax.set_title(panel["title"], fontsize=10)
            ax.set_xlabel("seconds")
            ax.set_ylabel(_UNITS.get(panel["fieldConfig"]["defaults"].get("unit", ""), ""))
            ax.legend(fontsize=6, loc="best")
            ax.grid(alpha=0.3)
        figure.suptitle(f"Quiver — {title}")
        figure.tight_layout()
        path = directory / f"{re.sub(r'[^a-z0-9]+', '-', title.lower()).strip('-')}.png"
        figure.savefig(path, dpi=90)
        plt.close(figure)
        drawn[path] = lines
    return drawn
