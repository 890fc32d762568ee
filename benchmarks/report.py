"""The harness's results as files: JSON (everything), a Markdown table and a PNG plot.

Called by benchmarks/__main__.py after `harness.run`. The Markdown opens with the machine,
versions, pinning and date, then one summary table of ratios against the issue's targets
(Quiver's best closed-loop throughput against each peer's best, p50 at concurrency 1), then
every point. The plot has one panel per model: p50 latency against throughput, one line per
target through its closed-loop points (labelled with the concurrency), open-loop points as
hollow markers.
"""

from __future__ import annotations

import json
from pathlib import Path

PEERS = ("ray-serve", "kserve", "mlserver", "grpc-plain")


def write(results: dict, out: Path, stem: str = "bench") -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.json", out / f"{stem}.md", out / f"{stem}.png"]
    paths[0].write_text(json.dumps(results, indent=1) + "\n")
    paths[1].write_text(markdown(results, paths[2].name))
    plot(results, paths[2])
    return paths


def _closed(record: dict) -> list[dict]:
    return [p for p in record["points"] if p["point"]["mode"] == "closed"]


def best(record: dict) -> dict | None:
    """The closed-loop point with the highest throughput and no errors (None if every point failed)."""
    clean = [p for p in _closed(record) if not p["errors"] and p["requests"]]
    return max(clean, key=lambda p: p["throughput"], default=None)


def at_concurrency(record: dict, concurrency: int) -> dict | None:
    return next((p for p in _closed(record) if p["point"]["concurrency"] == concurrency), None)


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}" if abs(value) < 100 else f"{value:,.0f}"


def _load(point: dict) -> str:
    return f"closed c={point['concurrency']}" if point["mode"] == "closed" else f"open {point['rate']:g}/s"


def header(meta: dict) -> list[str]:
    v, m = meta["versions"], meta["machine"]
    peers = [f"{name}: " + ", ".join(f"{k} {x}" for k, x in (v.get(f"{name}_venv") or {}).items()) for name in ("kserve", "mlserver")]
    s = meta["settings"]
    return [
        f"- date: {meta['date']} (finished {meta.get('finished', '?')}); quiver {v['quiver']} at {v['git_commit']}",
        f"- machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, {m['memory_gib']} GiB, {m['os']}; "
        f"load average {meta['load_average_start']} at start, {meta.get('load_average_end', '?')} at end (shared machine)",
        f"- pinning: {meta['pinning']['how']}",
        f"- .venv: python {v['python']}, onnxruntime {v.get('onnxruntime-gpu') or v.get('onnxruntime')}, ray {v['ray']}, "
        f"grpcio {v['grpcio']}, protobuf {v['protobuf']}, numpy {v['numpy']}",
        *(f"- {line}" for line in peers),
        f"- load: closed loop at concurrency {list(s['concurrency'])}, open loop at each model's rates; "
        f"{s['warmup_s']:g} s warm-up + {s['seconds']:g} s measured per point; batch-1 requests; "
        f"deadline {s['rpc_timeout_s']:g} s per request",
    ]


def summary_rows(results: dict) -> list[str]:
    rows = ["| model | Quiver best req/s | Quiver p50 @c=1 ms | vs | peer best req/s | peer p50 @c=1 ms | Quiver ÷ peer (best req/s) |",
            "|---|---:|---:|---|---:|---:|---:|"]
    by_model: dict[str, dict[str, dict]] = {}
    for record in results["runs"]:
        by_model.setdefault(record["model"], {})[record["target"]] = record
    for model, records in by_model.items():
        quiver = records.get("quiver")
        if quiver is None:
            continue
        q_best, q_one = best(quiver), at_concurrency(quiver, 1)
        for peer in ("onnxruntime", *PEERS):
            if peer not in records:
                continue
            p_best, p_one = best(records[peer]), at_concurrency(records[peer], 1)
            ratio = q_best["throughput"] / p_best["throughput"] if q_best and p_best else None
            rows.append(
                f"| {model} | {_fmt(q_best and q_best['throughput'])} (c={q_best and q_best['point']['concurrency']}) "
                f"| {_fmt(q_one and q_one['latency_ms']['p50'])} | {peer} "
                f"| {_fmt(p_best and p_best['throughput'])} (c={p_best and p_best['point']['concurrency']}) "
                f"| {_fmt(p_one and p_one['latency_ms']['p50'])} | {_fmt(ratio)} |"
            )
    return rows


def markdown(results: dict, plot_name: str) -> str:
    lines = ["# Quiver against its peers", "", *header(results["meta"]), "",
             "Ratios are measured side by side in this one run; compare ratios, not absolute numbers, across runs.", "",
             "## Summary", "", *summary_rows(results), "",
             "Best = the highest-throughput closed-loop point without errors.", "",
             f"![p50 latency against throughput]({plot_name})", "", "## Every point", "",
             "| model | target | load | req/s | p50 ms | p90 ms | p99 ms | max ms | errors | client CPU |",
             "|---|---|---|---:|---:|---:|---:|---:|---|---:|"]
    failures = []
    for record in results["runs"]:
        if record.get("error"):
            failures.append(f"- {record['model']} × {record['target']}: {record['error'].splitlines()[0]}")
        if record.get("ready") and not record["ready"].get("ok"):
            failures.append(f"- {record['model']} × {record['target']}: never answered: {record['ready'].get('error')}")
        for p in record["points"]:
            lat = p["latency_ms"]
            errors = ", ".join(f"{code} {n}" for code, n in p["errors"].items()) or "0"
            if p.get("tally"):  # which variant answered, for the routed model
                errors += " (served by " + ", ".join(f"{k} {n}" for k, n in sorted(p["tally"].items())) + ")"
            lines.append(f"| {record['model']} | {record['target']} | {_load(p['point'])} | {_fmt(p['throughput'])} "
                         f"| {_fmt(lat['p50'])} | {_fmt(lat['p90'])} | {_fmt(lat['p99'])} | {_fmt(lat['max'])} | {errors} "
                         f"| {p['client_cpu']:.2f} |")
    if failures:
        lines += ["", "## Failures", "", *failures]
    lines += ["", "## Targets", ""]
    seen = set()
    for record in results["runs"]:
        if record["target"] not in seen:
            seen.add(record["target"])
            lines.append(f"- `{record['target']}`: {record['about']}")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model_keys = list(dict.fromkeys(r["model"] for r in results["runs"]))
    targets = list(dict.fromkeys(r["target"] for r in results["runs"]))
    colors = {t: plt.get_cmap("tab10")(i) for i, t in enumerate(targets)}
    figure, axes = plt.subplots(1, max(1, len(model_keys)), figsize=(6 * max(1, len(model_keys)), 5), squeeze=False)
    for axis, model in zip(axes[0], model_keys):
        for record in (r for r in results["runs"] if r["model"] == model):
            closed = [p for p in _closed(record) if p["requests"]]
            opened = [p for p in record["points"] if p["point"]["mode"] == "open" and p["requests"]]
            color = colors[record["target"]]
            if closed:
                axis.plot([p["throughput"] for p in closed], [p["latency_ms"]["p50"] for p in closed], "o-", color=color,
                          label=record["target"])
                for p in closed:
                    axis.annotate(f"c{p['point']['concurrency']}", (p["throughput"], p["latency_ms"]["p50"]), fontsize=7,
                                  textcoords="offset points", xytext=(3, 3), color=color)
            if opened:
                axis.scatter([p["throughput"] for p in opened], [p["latency_ms"]["p50"] for p in opened], facecolors="none",
                             edgecolors=[color], marker="s")
        axis.set(title=model, xlabel="throughput (req/s)", ylabel="p50 latency (ms)", xscale="log", yscale="log")
        axis.grid(True, which="both", alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    meta = results["meta"]
    figure.suptitle(f"Quiver vs peers — {meta['date']} — {meta['machine']['cpu']}, server CPUs "
                    f"{meta['pinning']['server_cpus']}, client CPUs {meta['pinning']['client_cpus']} "
                    f"(circles: closed loop, squares: open loop)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
