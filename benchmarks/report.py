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

PEERS = ("ray-serve", "kserve", "mlserver", "pytriton", "grpc-plain")
# Issue 18: (Quiver's target, the peer's) over the same transport.
TRITON_PAIRS = (("quiver", "pytriton"), ("quiver-http", "pytriton-http"), ("quiver-http-binary", "pytriton-http-binary"))
REST_PAIRS = (("quiver-http", "kserve-http"), ("quiver-http", "mlserver-http"))


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
    if abs(value) < 1:
        return f"{value:.3f}"
    return f"{value:,.{digits}f}" if abs(value) < 100 else f"{value:,.0f}"


def _load(point: dict) -> str:
    return f"closed c={point['concurrency']}" if point["mode"] == "closed" else f"open {point['rate']:g}/s"


def header(meta: dict) -> list[str]:
    v, m = meta["versions"], meta["machine"]
    peers = [f"{name}: " + ", ".join(f"{k} {x}" for k, x in (v.get(f"{name}_venv") or {}).items()) for name in ("kserve", "mlserver", "pytriton") if f"{name}_venv" in v]
    s = meta["settings"]
    return [
        f"- date: {meta['date']} (finished {meta.get('finished', '?')}); quiver {v['quiver']} at {v['git_commit']}"
        + (f" with uncommitted changes to {', '.join(v['quiver_uncommitted'])}" if v.get("quiver_uncommitted") else "")
        + (f"; PYTHONPATH={v['pythonpath']}" if v.get("pythonpath") else ""),
        f"- machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, {m['memory_gib']} GiB, {m['os']}; "
        f"load average {meta['load_average_start']} at start, {meta.get('load_average_end', '?')} at end (shared machine)",
        "- instruction-set flags: " + (" ".join(m["isa"]) if "isa" in m else "not recorded (this run predates the record; "
                                        "ONNX Runtime's int8 speed depends on them)"),
        f"- pinning: {meta['pinning']['how']}",
        f"- .venv: python {v['python']}, onnxruntime {v.get('onnxruntime-gpu') or v.get('onnxruntime')}, ray {v['ray']}, "
        f"grpcio {v['grpcio']}, protobuf {v['protobuf']}, numpy {v['numpy']}",
        *(f"- {line}" for line in peers),
        f"- load: closed loop at concurrency {list(s['concurrency'])}, open loop at each model's rates; "
        f"{s['warmup_s']:g} s warm-up + {s['seconds']:g} s measured per point; batch-1 requests; "
        f"deadline {s['rpc_timeout_s']:g} s per request",
        *([f"- note: {meta['note']}"] if meta.get("note") else []),
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


def _records(results: dict) -> dict[tuple[str, str], dict]:
    return {(r["model"], r["target"]): r for r in results["runs"]}


def issue_targets(results: dict) -> list[str]:
    """Issue 7's targets, each as measured in this run: (label, value, goal, met?)."""
    runs = _records(results)

    def best_of(model: str, target: str) -> float | None:
        point = best(runs[(model, target)]) if (model, target) in runs else None
        return point["throughput"] if point else None

    def p50_one(model: str, target: str) -> float | None:
        point = at_concurrency(runs[(model, target)], 1) if (model, target) in runs else None
        return point["latency_ms"]["p50"] if point and point["requests"] else None

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a and b else None

    def diff(a: float | None, b: float | None) -> float | None:
        return a - b if a is not None and b is not None else None

    checks = [
        ("example: Quiver ÷ Ray Serve gRPC proxy, best req/s", ratio(best_of("example", "quiver"), best_of("example", "ray-serve")), "≥ 3", lambda x: x >= 3),
        ("example: Quiver ÷ KServe, best req/s", ratio(best_of("example", "quiver"), best_of("example", "kserve")), "≥ 0.9", lambda x: x >= 0.9),
        ("example: Quiver ÷ MLServer, best req/s", ratio(best_of("example", "quiver"), best_of("example", "mlserver")), "≥ 0.9", lambda x: x >= 0.9),
        ("example: Quiver p50 at c=1, ms", p50_one("example", "quiver"), "≤ 2.0", lambda x: x <= 2.0),
    ]
    for model in ("minilm-fp32", "minilm-int8"):
        checks += [
            (f"{model}: Quiver ÷ in-process ONNX Runtime, best req/s", ratio(best_of(model, "quiver"), best_of(model, "onnxruntime")), "≥ 0.85", lambda x: x >= 0.85),
            (f"{model}: Quiver p50 − in-process p50 at c=1, ms", diff(p50_one(model, "quiver"), p50_one(model, "onnxruntime")), "≤ 2", lambda x: x <= 2),
        ]
    checks.append(("minilm-routed (Quiver, budget → int8) ÷ KServe minilm-fp32, best req/s",
                   ratio(best_of("minilm-routed", "quiver"), best_of("minilm-fp32", "kserve")), "≥ 1.8", lambda x: x >= 1.8))
    rows = ["| target (issue 7) | measured | goal | met |", "|---|---:|---:|---|"]
    for label, value, goal, met in checks:
        rows.append(f"| {label} | {_fmt(value)} | {goal} | {'–' if value is None else ('yes' if met(value) else '**no**')} |")
    return rows


def transport_rows(results: dict) -> list[str]:
    """Issue 18: Quiver ÷ Triton (PyTriton) at each concurrency per transport; Quiver's REST ÷ each peer's REST, best against best."""
    runs = _records(results)
    rows = ["| model | Quiver | peer | load | Quiver req/s | peer req/s | Quiver ÷ peer | Quiver p50 ms | peer p50 ms |",
            "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for model in dict.fromkeys(r["model"] for r in results["runs"]):
        for ours, theirs in (*TRITON_PAIRS, *REST_PAIRS):
            if (model, ours) not in runs or (model, theirs) not in runs:
                continue
            q, t = runs[(model, ours)], runs[(model, theirs)]
            if (ours, theirs) in REST_PAIRS:
                pairs = [("best", best(q), best(t))]
            else:
                pairs = [(f"c={p['point']['concurrency']}", p, at_concurrency(t, p["point"]["concurrency"])) for p in _closed(q)]
            for load, a, b in pairs:
                ok_a, ok_b = a and a["requests"] and not a["errors"], b and b["requests"] and not b["errors"]
                ratio = a["throughput"] / b["throughput"] if ok_a and ok_b else None
                if load == "best" and ok_a and ok_b:
                    load = f"best (c={a['point']['concurrency']} vs c={b['point']['concurrency']})"
                rows.append(f"| {model} | {ours} | {theirs} | {load} | {_fmt(a and a['throughput'])} | {_fmt(b and b['throughput'])} "
                            f"| {_fmt(ratio)} | {_fmt(a and a['latency_ms']['p50'])} | {_fmt(b and b['latency_ms']['p50'])} |")
    return rows if len(rows) > 2 else []


def markdown(results: dict, plot_name: str) -> str:
    lines = ["# Quiver against its peers", "", *header(results["meta"]), "",
             "Ratios are measured side by side in this one run; compare ratios, not absolute numbers, across runs.", "",
             "## Issue 7's targets", "", *issue_targets(results), "",
             "## Quiver against each target", "", *summary_rows(results), "",
             *(["## Over each transport (issue 18: goal ≥ 1.0 on every row)", "", *rows, ""] if (rows := transport_rows(results)) else []),
             "Best = the highest-throughput closed-loop point without errors.", "",
             f"![p50 latency against throughput]({plot_name})", "", "## Every point", "",
             "| model | target | load | req/s | p50 ms | p90 ms | p99 ms | max ms | errors | client CPU | server CPU ms/req |",
             "|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|"]
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
                         f"| {p['client_cpu']:.2f} | {_fmt(p.get('server_cpu_ms'))} |")
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
    columns = min(2, max(1, len(model_keys)))
    rows = -(-max(1, len(model_keys)) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(7.5 * columns, 5.5 * rows), squeeze=False)
    for axis in axes.flat[len(model_keys):]:
        axis.set_visible(False)
    for axis, model in zip(axes.flat, model_keys):
        records = [(r, r["target"], "-") for r in results["runs"] if r["model"] == model]
        if model == "minilm-routed":  # what the issue compares it with: KServe serving fp32
            records += [(r, f"{r['target']} (minilm-fp32)", "--") for r in results["runs"]
                        if r["model"] == "minilm-fp32" and r["target"] == "kserve"]
        throughputs = []
        for record, label, style in records:
            closed = [p for p in _closed(record) if p["requests"]]
            opened = [p for p in record["points"] if p["point"]["mode"] == "open" and p["requests"]]
            color = colors[record["target"]]
            throughputs += [p["throughput"] for p in closed + opened]
            if closed:
                axis.plot([p["throughput"] for p in closed], [p["latency_ms"]["p50"] for p in closed], marker="o",
                          linestyle=style, color=color, label=label)
                for p in closed:
                    axis.annotate(f"c{p['point']['concurrency']}", (p["throughput"], p["latency_ms"]["p50"]), fontsize=7,
                                  textcoords="offset points", xytext=(3, 3), color=color)
            if opened:
                axis.scatter([p["throughput"] for p in opened], [p["latency_ms"]["p50"] for p in opened], facecolors="none",
                             edgecolors=[color], marker="s")
        wide = throughputs and max(throughputs) > 20 * max(min(throughputs), 1e-9)
        axis.set(title=model, xlabel="throughput (req/s)", ylabel="p50 latency (ms)", xscale="log" if wide else "linear",
                 yscale="log")
        axis.grid(True, which="both", alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    meta = results["meta"]
    figure.suptitle(f"Quiver vs peers — {meta['date']} — {meta['machine']['cpu']}, server CPUs "
                    f"{meta['pinning']['server_cpus']}, load generator CPUs {meta['pinning']['client_cpus']}\n"
                    f"circles: closed loop at concurrency c; hollow squares: open loop at fixed rates", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
