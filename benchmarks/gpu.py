"""MiniLM fp32 against fp16 on the GPU: ONNX Runtime's CUDA provider (and TensorRT when present)
at batch 1, 8 and 64, then through `quiver serve` with the fp16 variant on a `gpu` pool.

    python -m benchmarks.gpu [--seconds 3]     # writes benchmarks/results/gpu-<host>.{json,md}

Meant for a machine with an NVIDIA GPU (the `device` tool's, when a task is lent one); without
one it still runs, on the CPU provider, and says so in the header, so the script is always
exercised. Every number comes from this one run: compare the ratios in it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks import harness, models
from benchmarks.harness import BenchSettings
from benchmarks.models import MINILM_BUILD, BenchModel

RESULTS = Path(__file__).resolve().parent / "results"
QUIVER = str(Path(sys.executable).with_name("quiver"))  # the console script of this environment
BATCHES = (1, 8, 64)


def providers(gpu: bool) -> list[list[str]]:
    """Each accelerated provider this ONNX Runtime offers (with the CPU behind it); the CPU alone
    without a GPU (onnxruntime-gpu lists CUDA and TensorRT even where their libraries cannot load)."""
    offered = ort.get_available_providers() if gpu else []
    chains = [[p, "CPUExecutionProvider"] for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in offered]
    return chains or [["CPUExecutionProvider"]]


def gpu_name() -> str | None:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def optimized_store() -> Path:
    """MiniLM through `quiver optimize --variants fp32,fp16 --target gpu` (kept in examples/minilm/build/)."""
    models._optimized(print)  # exports MiniLM if needed
    store = MINILM_BUILD / "gpu-store"
    if not (store / "minilm/1/manifest.json").exists():
        subprocess.run(
            [QUIVER, "optimize", str(MINILM_BUILD / "minilm.onnx"), "--name", "minilm", "--version", "1",
             "--store", str(store), "--eval", str(MINILM_BUILD / "sentences.npz"), "--metric", "cosine",
             "--variants", "fp32,fp16", "--target", "gpu", "--bench-seconds", "0.5", "--bench-batch", "8", "--force"],
            check=True, stdout=subprocess.DEVNULL,
        )
    return store


def time_session(file: Path, chain: list[str], feeds: dict[str, np.ndarray], batch: int, seconds: float) -> dict:
    session = ort.InferenceSession(str(file), providers=chain)
    batch_feeds = {name: np.repeat(array[:1], batch, axis=0) for name, array in feeds.items()}
    for _ in range(3):  # warm-up: kernels chosen, engines built
        session.run(None, batch_feeds)
    latencies = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end and len(latencies) < 100_000:
        start = time.perf_counter()
        session.run(None, batch_feeds)
        latencies.append(time.perf_counter() - start)
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    return {"provider": chain[0], "batch": batch, "runs": len(latencies), "p50_ms": round(float(p50), 3),
            "p99_ms": round(float(p99), 3), "rows_per_s": round(batch * len(latencies) / sum(latencies), 1),
            "used": session.get_providers()[0]}


def serve(store: Path, seconds: float, scratch: Path, gpu: bool) -> dict:
    """The fp16 variant through `quiver serve`: on a gpu pool when there is a GPU, else on this CPU node
    posing as one (so the path is exercised)."""
    variant_model = BenchModel("minilm-fp16", "minilm", store / "minilm/1/fp16.onnx", MINILM_BUILD / "sentences.npz", (),
                               "MiniLM fp16 via quiver serve", store=store, parameters={"quiver.variant": "fp16"})
    launch = harness.Launch([QUIVER, "serve", str(store), "--port", "0", "--http-port", "-1", "--metrics-port", "-1",
                             "--pools", "cpu,gpu" if not gpu else "gpu", "--log-level", "WARNING"], {"RAY_USAGE_STATS_ENABLED": "0"})
    settings = BenchSettings(concurrency=(1, 8), rates=(), seconds=seconds, warmup_s=1.0)
    with harness.started(launch, None, scratch / "quiver.log", settings.startup_timeout_s) as address:
        return harness.load(address, variant_model, settings, None, scratch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measured time per point")
    args = parser.parse_args()
    store = optimized_store()
    manifest = json.loads((store / "minilm/1/manifest.json").read_text())
    files = {variant["name"]: store / "minilm/1" / variant["file"] for variant in manifest["variants"]}
    sentences = np.load(MINILM_BUILD / "sentences.npz")
    feeds = {i.name: sentences[i.name] for i in ort.InferenceSession(str(files["fp32"])).get_inputs()}
    card = gpu_name()
    sessions = [dict(variant=name, **time_session(file, chain, feeds, batch, args.seconds))
                for chain in providers(card is not None) for name, file in files.items() for batch in BATCHES]
    with tempfile.TemporaryDirectory(prefix="quiver-gpu-") as scratch:
        served = serve(store, args.seconds, Path(scratch), gpu=card is not None)
    record = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"host": socket.gethostname(), "gpu": card or "none: CPU provider only (no GPU on this machine)",
                    "cpu": platform.processor() or platform.machine()},
        "versions": {"onnxruntime": ort.__version__, "providers": ort.get_available_providers()},
        "published": [v["name"] for v in manifest["variants"]],
        "sessions": sessions,
        "quiver_serve_fp16": served,
    }
    stem = RESULTS / f"gpu-{socket.gethostname()}"
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [f"# MiniLM fp32 vs fp16 — {record['machine']['gpu']}", "", f"{record['date']}, onnxruntime {ort.__version__}", "",
             "| provider (used) | variant | batch | p50 ms | p99 ms | rows/s |", "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {s['provider']} ({s['used']}) | {s['variant']} | {s['batch']} | {s['p50_ms']} | {s['p99_ms']} | {s['rows_per_s']} |"
              for s in sessions]
    lines += ["", "`quiver serve`, fp16 variant pinned with `quiver.variant`:", "", "| load | req/s | p50 ms | p99 ms | errors |",
              "|---|---:|---:|---:|---|"]
    lines += [f"| c={p['point'].get('concurrency')} | {p['throughput']:.1f} | {p['latency_ms']['p50']} | {p['latency_ms']['p99']} | "
              f"{p['errors'] or 0} |" for p in served.get("points", [])]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
