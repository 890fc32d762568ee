"""The tuning report: throughput against p99 for every trial, per variant, with the chosen
point and the SLO line, as `tune.png` and `tune.html` (the picture and a table of the trials)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from ..manifest import Profile
from .search import SearchResult

PLOT_FILE, PAGE_FILE = "tune.png", "tune.html"


def write_report(directory: Path, title: str, results: dict[str, SearchResult], profiles: dict[str, Profile]) -> Path:
    """Write both files into `directory`; returns the page."""
    _plot(title, results, profiles, directory / PLOT_FILE)
    png = base64.b64encode((directory / PLOT_FILE).read_bytes()).decode()
    sections = []
    for name, result in results.items():
        chosen = profiles.get(name)
        verdict = (
            "nothing measured" if chosen is None
            else f"chosen: {_settings(chosen.settings.model_dump())}" if chosen.meets_slo
            else f"none meets the SLO of {result.slo_p99_ms} ms; lowest p99 {chosen.p99_ms:.2f} ms, settings left as they were"
        )
        rows = "".join(
            f"<tr><td>{html.escape(_settings(t.settings.model_dump()))}</td><td>{t.p50_ms:.2f}</td>"
            f"<td>{t.p99_ms:.2f}</td><td>{t.throughput:.0f}</td><td>{t.clients}</td><td>{t.requests}</td></tr>"
            for t in result.trials
        )
        budget = " (stopped by the time budget)" if result.out_of_budget else ""
        sections.append(
            f"<h2>{html.escape(name)}</h2><p>{html.escape(verdict)}; {len(result.trials)} trials{budget}.</p>"
            f"<table><tr><th>settings</th><th>p50 ms</th><th>p99 ms</th><th>rows/s</th><th>clients</th><th>requests</th></tr>{rows}</table>"
        )
    page = directory / PAGE_FILE
    page.write_text(
        f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title><h1>{html.escape(title)}</h1>"
        f'<img alt="throughput against p99 per variant" src="data:image/png;base64,{png}">{"".join(sections)}\n'
    )
    return page


def _settings(values: dict) -> str:
    return ", ".join(f"{key}={value}" for key, value in values.items())


def _plot(title: str, results: dict[str, SearchResult], profiles: dict[str, Profile], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 4.5), dpi=100)
    slo = None
    for name, result in results.items():
        slo = result.slo_p99_ms or slo
        points = axes.scatter([t.throughput for t in result.trials], [t.p99_ms for t in result.trials], s=25, alpha=0.6, label=name)
        chosen = profiles.get(name)
        if chosen is not None:
            edges = {"edgecolors": "black"} if chosen.meets_slo else {}  # an x has no edge to draw
            axes.scatter([chosen.throughput], [chosen.p99_ms], s=160, marker="*" if chosen.meets_slo else "x",
                         color=points.get_facecolor()[0], zorder=3, **edges)
    if slo is not None:
        axes.axhline(slo, color="red", linestyle="--", linewidth=1, label=f"SLO p99 {slo:g} ms")
    axes.set_xlabel("throughput (rows/s)")
    axes.set_ylabel("p99 latency (ms)")
    axes.set_title(f"{title}: ★ chosen, x none meets the SLO")
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
