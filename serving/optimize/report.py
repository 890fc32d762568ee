"""The optimization report: `report.json`, and accuracy against latency as a PNG and an HTML page.

Beside each variant's mean accuracy the report gives its tail (p5 and min, over examples for
cosine and over classes for top1: accuracy.py) and says which statistic the gate held to the limit.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from .results import Result
from .settings import OptimizeSettings

REPORT_FILE, PLOT_FILE, PAGE_FILE = "report.json", "accuracy_latency.png", "report.html"


def report_document(result: Result, settings: OptimizeSettings) -> dict:
    return {
        "model": result.manifest.name,
        "version": result.manifest.version,
        "source": str(settings.model),
        "metric": next((o.metrics.metric for o in result.outcomes if o.metrics), settings.metric.value),
        "reference_score": result.reference_score,
        "reference_p5": result.reference_p5,
        "reference_min": result.reference_min,
        "tail_unit": next((o.metrics.tail_unit for o in result.outcomes if o.metrics), None),
        "gate": settings.gate.value,
        "max_accuracy_drop": settings.max_accuracy_drop,
        "variants": [
            {
                "variant": outcome.kind.value,
                "precision": outcome.kind.precision.value,
                "pool": outcome.kind.device.value,
                "size_bytes": outcome.size_bytes,
                "published": outcome.published,
                "reason": outcome.reason,
                "metrics": outcome.metrics.model_dump() if outcome.metrics else None,
            }
            for outcome in result.outcomes
        ],
    }


def write_report(result: Result, settings: OptimizeSettings, directory: Path) -> None:
    document = report_document(result, settings)
    (directory / REPORT_FILE).write_text(json.dumps(document, indent=2) + "\n")
    _plot(document, directory / PLOT_FILE)
    png = base64.b64encode((directory / PLOT_FILE).read_bytes()).decode()
    title = html.escape(f"{document['model']} version {document['version']}")
    rows = "".join(
        f"<tr><td>{html.escape(v['variant'])}</td>{_accuracy_cells(v['metrics'])}"
        f"<td>{'yes' if v['published'] else 'no'}</td><td>{html.escape(v['reason'])}</td></tr>"
        for v in document["variants"]
    )
    metric, unit = html.escape(document["metric"]), html.escape(document["tail_unit"] or "unit")
    (directory / PAGE_FILE).write_text(
        f"<!doctype html><meta charset=utf-8><title>{title}</title><h1>{title}</h1>"
        f'<img alt="accuracy against latency per variant" src="data:image/png;base64,{png}">'
        f"<p>Gate: the drop in the {html.escape(document['gate'])} against fp32 at most "
        f"{document['max_accuracy_drop']}; p5 and min are over each {unit}'s {metric}.</p>"
        f"<table><tr><th>variant</th><th>{metric} (mean)</th><th>p5</th><th>min</th><th>drop: mean</th>"
        f"<th>p5</th><th>min</th><th>published</th><th>why</th></tr>{rows}</table>\n"
    )


def _accuracy_cells(metrics: dict | None) -> str:
    keys = ("accuracy", "accuracy_p5", "accuracy_min", "accuracy_drop", "accuracy_drop_p5", "accuracy_drop_min")
    values = [None if metrics is None else metrics[key] for key in keys]
    return "".join(f"<td>{'-' if value is None else f'{value:.4f}'}</td>" for value in values)


def _plot(document: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(6, 4), dpi=100)
    for variant in document["variants"]:
        metrics = variant["metrics"]
        if metrics is None:
            continue
        marker = "o" if variant["published"] else "x"
        axes.scatter(metrics["p50_ms"], metrics["accuracy"], marker=marker, s=60)
        axes.annotate(variant["variant"], (metrics["p50_ms"], metrics["accuracy"]), textcoords="offset points", xytext=(5, 5))
    axes.set_xlabel("p50 latency at batch 1 (ms)")
    axes.set_ylabel(document["metric"])
    axes.set_title(f"{document['model']} v{document['version']}: o published, x refused")
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
