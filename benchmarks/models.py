"""The models the harness serves: one `.onnx` file and one request per model, the same for every target.

- `example`: the bundled MLP (64 → 96 → 10, serving/example.py), a random batch-1 row: the
  serving path dominates;
- `minilm-fp32`, `minilm-int8`: all-MiniLM-L6-v2 (examples/minilm/export.py; the `examples`
  extra) through `quiver optimize --variants fp32,int8-dynamic --metric cosine`, one tokenized
  sentence of 128 tokens per request: the model dominates;
- `minilm-routed` (Quiver only): both MiniLM variants in one store, half a CPU per replica,
  and requests that carry a latency budget and `quiver.min_accuracy` 0.99, so the router may
  choose int8 (cosine 0.993) — the issue compares it with KServe serving fp32.

MiniLM's export and its optimized store are kept in examples/minilm/build/ (ignored by git) and
reused on later runs; the example model is rebuilt into the run's scratch directory (it takes
milliseconds and always has the same bytes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MINILM_BUILD = ROOT / "examples/minilm/build"


@dataclass(frozen=True)
class BenchModel:
    key: str
    name: str  # the model name requests carry
    file: Path
    inputs: Path  # .npz: the first row of each array is the request
    rates: tuple[float, ...]  # open-loop request rates, req/s
    about: str
    store: Path | None = None  # served instead of `file` by targets that route between variants (Quiver)
    parameters: dict[str, object] = field(default_factory=dict)  # every request's parameters


KEYS = ("example", "minilm-fp32", "minilm-int8", "minilm-routed")
BUDGET_MS = 25.0  # between MiniLM int8's p50 (~13 ms on one CPU here) and fp32's (~30 ms)


def prepare(keys: list[str], scratch: Path, log: callable = print) -> list[BenchModel]:
    """Build (or reuse) the files of the models named by `keys`, in that order."""
    unknown = set(keys) - set(KEYS)
    if unknown:
        raise ValueError(f"unknown model(s) {sorted(unknown)}; known: {list(KEYS)}")
    models = []
    for key in keys:
        if key == "example":
            models.append(_example(scratch))
        elif key == "minilm-routed":
            models.append(_minilm_routed(log))
        else:
            models.append(_minilm(key.removeprefix("minilm-"), log))
    return models


def _example(scratch: Path) -> BenchModel:
    from quiver.serving import build_example

    directory = scratch / "example"
    file = build_example(directory / "example.onnx")
    inputs = directory / "request.npz"
    np.savez(inputs, input=np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32))
    # 100/s: light for every target; 1,000/s: past what a Ray hop on one CPU can answer.
    return BenchModel("example", "example", file, inputs, (100.0, 1000.0), "MLP 64→96→10, FP32 [1, 64]")


def _optimized(log: callable) -> Path:
    """MiniLM's exported model through `quiver optimize` (fp32, int8-dynamic); the version's manifest."""
    source, sentences = MINILM_BUILD / "minilm.onnx", MINILM_BUILD / "sentences.npz"
    if not source.exists() or not sentences.exists():
        log(f"exporting MiniLM into {MINILM_BUILD} (examples/minilm/export.py)")
        subprocess.run([sys.executable, str(ROOT / "examples/minilm/export.py"), "--out", str(MINILM_BUILD)], check=True)
    store = MINILM_BUILD / "bench-store"
    manifest = store / "minilm/1/manifest.json"
    if not manifest.exists():
        log(f"optimizing MiniLM into {store} (quiver optimize: fp32, int8-dynamic)")
        subprocess.run(
            [sys.executable, "-m", "quiver", "optimize", str(source), "--name", "minilm", "--version", "1",
             "--store", str(store), "--eval", str(sentences), "--metric", "cosine",
             "--variants", "fp32,int8-dynamic", "--bench-seconds", "0.5", "--bench-batch", "8", "--force"],
            check=True, stdout=subprocess.DEVNULL,
        )
    return manifest


def _minilm(variant: str, log: callable) -> BenchModel:
    manifest = _optimized(log)
    variants = {v["name"]: v for v in json.loads(manifest.read_text())["variants"]}
    name = {"fp32": "fp32", "int8": "int8-dynamic"}[variant]
    if name not in variants:
        raise RuntimeError(f"quiver optimize did not publish MiniLM {name} (see {manifest.parent}/report.json)")
    rates = {"fp32": (8.0, 20.0), "int8": (15.0, 30.0)}[variant]
    return BenchModel(
        f"minilm-{variant}", f"minilm-{variant}", manifest.parent / variants[name]["file"], MINILM_BUILD / "sentences.npz", rates,
        f"all-MiniLM-L6-v2 {name}, INT64 [1, 128] ×2",
    )


def _minilm_routed(log: callable) -> BenchModel:
    """A store holding both optimized variants (hard links), half a CPU per replica so both fit one CPU."""
    source = _optimized(log)
    manifest = json.loads(source.read_text())
    store = MINILM_BUILD / "bench-routed-store"
    directory = store / "minilm-routed/1"
    directory.mkdir(parents=True, exist_ok=True)
    for variant in manifest["variants"]:
        variant["replicas"]["num_cpus"] = 0.5
        target = directory / variant["file"]
        if target.exists():
            target.unlink()
        os.link(source.parent / variant["file"], target)
    manifest["name"] = "minilm-routed"
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return BenchModel(
        "minilm-routed", "minilm-routed", directory / "fp32.onnx", MINILM_BUILD / "sentences.npz", (8.0, 20.0),
        f"all-MiniLM-L6-v2 fp32 + int8-dynamic, routed: quiver.latency_budget_ms {BUDGET_MS:g}, quiver.min_accuracy 0.99",
        store=store, parameters={"quiver.latency_budget_ms": BUDGET_MS, "quiver.min_accuracy": "0.99"},
    )
