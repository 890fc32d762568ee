"""Where a measurement came from: every benchmark that publishes numbers writes them through here.

    run = provenance.begin()                      # at the start: date, command, machine, load
    ...measure...
    provenance.write("routing", run, data, body)  # benchmarks/results/routing-<stamp>.{json,md}

A results file is JSON `{"meta": ..., **data}` and Markdown whose header states the same meta:
the date (UTC), the exact command line, the git commit and which files of the tree differed
from it, the CPU model, logical CPUs and the CPU's instruction-set flags (ONNX Runtime's int8
kernels run 1.5× fp32 on an AVX2-only host and 2.1× on an AVX-512 VNNI host of the same machine
kind, so a number without them cannot be compared), the load average at start and end (this
machine is shared), and the versions of what ran. The docs' tables are pasted from these
Markdown files; tests/test_published_numbers.py checks that they still are.

Used by soak, variants, routing, tracing_cost, faults, process_cpu, hop_cost and grpc_stop_race;
harness.py (the peer comparison) builds its own meta on `machine()` and `versions()`, in the
format report.py reads.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"

# The flags that decide which ONNX Runtime kernels run (int8: VNNI/AMX; fp16: F16C, AVX-512 FP16).
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16")
PACKAGES = ("onnxruntime", "onnxruntime-gpu", "ray", "grpcio", "protobuf", "numpy", "onnx", "torch")


def machine() -> dict:
    """CPU model, logical CPUs, memory, OS, and the CPU's instruction-set flags (all, and those of interest)."""
    cpu_model, flags, memory_kb = "", [], 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not cpu_model:
                cpu_model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = value.split()
        memory_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                             if line.startswith("MemTotal")))
    except (OSError, StopIteration, ValueError):
        pass
    return {
        "cpu": cpu_model or platform.processor(),
        "logical_cpus": os.cpu_count(),
        "memory_gib": round(memory_kb / 2**20, 1),
        "os": platform.platform(),
        "isa": [flag for flag in ISA_FLAGS if flag in flags],
        "flags": flags,
    }


def git_commit() -> str | None:
    commit = _git("rev-parse", "--short", "HEAD")
    return commit.strip() if commit else None


def git_dirty(*paths: str) -> list[str] | None:
    """Files that differ from the commit (under `paths`, or anywhere): the numbers are of that tree."""
    status = _git("status", "--porcelain", "--untracked-files=no", "--", *paths)
    return None if status is None else [line[3:] for line in status.splitlines()]


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict:
    return {
        "python": platform.python_version(),
        "quiver": package_version("quiver"),
        "git_commit": git_commit(),
        "pythonpath": os.environ.get("PYTHONPATH"),
        # Uncommitted changes to what the server runs (quiver, serving, router, protos).
        "quiver_uncommitted": git_dirty("quiver", "serving", "router", "protos"),
        **{name: package_version(name) for name in PACKAGES},
    }


def command_line() -> str:
    """How this process was started, as one would type it (`python -m benchmarks.routing --seconds 8`)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    head = ["python", "-m", spec.name] if spec is not None and spec.name else ["python", *sys.argv[:1]]
    return shlex.join(head + sys.argv[1:])


def begin(command: str | None = None) -> dict:
    """The meta block, as far as it is known when a run starts."""
    now = dt.datetime.now(dt.timezone.utc)
    return {
        "date": now.isoformat(timespec="seconds"),
        "command": command or command_line(),
        "commit": git_commit(),
        "dirty": git_dirty(),
        "machine": machine(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "versions": versions(),
    }


def finish(meta: dict) -> dict:
    meta["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    meta["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return meta


def header(meta: dict) -> list[str]:
    """Markdown lines that state a run's provenance."""
    m, v = meta["machine"], meta["versions"]
    dirty = meta.get("dirty")
    packages = ", ".join(f"{name} {v[name]}" for name in PACKAGES if v.get(name))
    return [
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']} to {meta.get('finished', '?')}; commit {meta['commit']}"
        + (f" with uncommitted changes to {', '.join(dirty)}" if dirty else " (clean tree)"),
        f"- machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, {m['memory_gib']} GiB, {m['os']}",
        f"- instruction-set flags: {' '.join(m['isa']) or 'none of interest'} (all flags in the JSON)",
        f"- load average (1, 5, 15 min): {meta['load_average_start']} at start, {meta.get('load_average_end', '?')} at end "
        "(a shared machine: other work ran beside this)",
        f"- python {v['python']}, {packages}",
    ]


def stamp(meta: dict) -> str:
    return dt.datetime.fromisoformat(meta["date"]).strftime("%Y-%m-%dT%H%M")


def write(name: str, meta: dict, data: dict, body: str, title: str, out: Path = RESULTS) -> tuple[Path, Path]:
    """`out/<name>-<stamp>.json` (meta and data) and `.md` (title, provenance, body); finishes the meta."""
    if "finished" not in meta:
        finish(meta)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{name}-{stamp(meta)}"
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    json_path.write_text(json.dumps({"meta": meta, **data}, indent=1) + "\n")
    md_path.write_text("\n".join([f"# {title}", "", *header(meta), "", body.rstrip(), ""]))
    return json_path, md_path
