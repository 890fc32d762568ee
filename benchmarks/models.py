"""The models the harness serves: one `.onnx` file and one request per model, the same for every target.

- `example`: the bundled MLP (64 → 96 → 10, serving/example.py), a random batch-1 row: the
  serving path dominates;
- `minilm-fp32`, `minilm-int8`: all-MiniLM-L6-v2 (examples/minilm/export.py; the `examples`
  extra) through `quiver optimize --variants fp32,int8-dynamic --metric cosine`, one tokenized
  sentence of 128 tokens per request: the model dominates.

MiniLM's export and its optimized store are kept in examples/minilm/build/ (ignored by git) and
reused on later runs; the example model is rebuilt into the run's scratch directory (it takes
milliseconds and always has the same bytes).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
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
    rates: tuple[float, ...]  # open-loop request rates, req/s, within what one CPU can answer
    about: str


KEYS = ("example", "minilm-fp32", "minilm-int8")


def prepare(keys: list[str], scratch: Path, log: callable = print) -> list[BenchModel]:
    """Build (or reuse) the files of the models named by `keys`, in that order."""
    unknown = set(keys) - set(KEYS)
    if unknown:
        raise ValueError(f"unknown model(s) {sorted(unknown)}; known: {list(KEYS)}")
    models = []
    for key in keys:
        if key == "example":
            models.append(_example(scratch))
        else:
            models.append(_minilm(key.removeprefix("minilm-"), log))
    return models


def _example(scratch: Path) -> BenchModel:
    from quiver.serving import build_example

    directory = scratch / "example"
    file = build_example(directory / "example.onnx")
    inputs = directory / "request.npz"
    np.savez(inputs, input=np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32))
    return BenchModel("example", "example", file, inputs, (250.0, 1000.0), "MLP 64→96→10, FP32 [1, 64]")


def _minilm(variant: str, log: callable) -> BenchModel:
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
    variants = {v["name"]: v for v in json.loads(manifest.read_text())["variants"]}
    name = {"fp32": "fp32", "int8": "int8-dynamic"}[variant]
    if name not in variants:
        raise RuntimeError(f"quiver optimize did not publish MiniLM {name} (see {store}/minilm/1/report.json)")
    rates = {"fp32": (8.0, 20.0), "int8": (15.0, 40.0)}[variant]
    return BenchModel(
        f"minilm-{variant}", f"minilm-{variant}", manifest.parent / variants[name]["file"], sentences, rates,
        f"all-MiniLM-L6-v2 {name}, INT64 [1, 128] ×2",
    )
