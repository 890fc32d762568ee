"""The limit: ONNX Runtime called in-process, with ideal batching and no network or serving.

    python -m benchmarks.inprocess PLAN.json    (started by benchmarks/harness.py)

Run in place of the load generator (benchmarks/loadgen.py), with the same plan and the same
output lines; the harness pins this process to the servers' CPUs, so this target gets the same
CPU share as the servers do. The same points as the gRPC targets, answered as a perfect server would:

- closed loop at CONCURRENCY: every round runs the CONCURRENCY waiting requests as batches of
  at most `max_batch` rows (Quiver's replicas batch the same way), back to back; each request's
  latency is the time from the round's start until its batch returns;
- open loop at RATE: requests arrive on the same fixed schedule as the gRPC load generator's;
  each run takes whatever has arrived (up to `max_batch`), and latency counts from arrival.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.loadgen import Sample, emit, request_rows, summarize

Feeds = dict[str, np.ndarray]


class Batches:
    """The request's row, repeated to each batch size once and kept."""

    def __init__(self, row: Feeds) -> None:
        self._row = row
        self._made: dict[int, Feeds] = {}

    def __call__(self, rows: int) -> Feeds:
        if rows not in self._made:
            self._made[rows] = {name: np.repeat(array, rows, axis=0) for name, array in self._row.items()}
        return self._made[rows]


def closed_batched(run: Callable[[Feeds], object], batches: Batches, seconds: float, concurrency: int, max_batch: int) -> Sample:
    sizes = [max_batch] * (concurrency // max_batch) + ([concurrency % max_batch] if concurrency % max_batch else [])
    sample = Sample()
    cpu, begin = time.process_time(), time.perf_counter()
    while (start := time.perf_counter()) < begin + seconds:
        for size in sizes:
            sample.sent += size
            run(batches(size))
            sample.latencies_s += [time.perf_counter() - start] * size
    sample.elapsed_s, sample.cpu_s = time.perf_counter() - begin, time.process_time() - cpu
    return sample


def open_batched(run: Callable[[Feeds], object], batches: Batches, rate: float, seconds: float, max_batch: int) -> Sample:
    sample = Sample()
    total = max(1, int(rate * seconds))
    cpu, begin = time.process_time(), time.perf_counter()
    arrivals = begin + np.arange(total) / rate
    done = 0
    while done < total:
        now = time.perf_counter()
        due = int(np.searchsorted(arrivals, now, side="right")) - done
        if due <= 0:
            time.sleep(arrivals[done] - now)
            continue
        size = min(due, max_batch)
        run(batches(size))
        finished = time.perf_counter()
        sample.latencies_s += list(finished - arrivals[done : done + size])
        done += size
    sample.sent = total
    sample.elapsed_s, sample.cpu_s = max(seconds, time.perf_counter() - begin), time.process_time() - cpu
    return sample


def run(plan: dict, emit: Callable[[dict], None]) -> None:
    sys.path.insert(0, str(Path(__file__).parent / "peers"))
    from ortmodel import OrtModel, datatype

    settings = plan["inprocess"]
    model = OrtModel(settings["model_file"], settings.get("threads", 1))
    batches = Batches(request_rows(Path(plan["inputs"])))
    outputs = model.run(batches(1))
    emit({"ready": {"ok": True, "after_s": 0.0, "outputs": [
        {"name": name, "datatype": datatype(array), "shape": list(array.shape)} for name, array in zip(model.output_names, outputs)
    ]}})
    max_batch = settings.get("max_batch", 64)
    for point in plan["points"]:
        if point["mode"] == "closed":
            closed_batched(model.run, batches, plan["warmup_s"], point["concurrency"], max_batch)
            sample = closed_batched(model.run, batches, plan["seconds"], point["concurrency"], max_batch)
        else:
            open_batched(model.run, batches, point["rate"], plan["warmup_s"], max_batch)
            sample = open_batched(model.run, batches, point["rate"], plan["seconds"], max_batch)
        emit({"point": point, **summarize(sample)})


def main() -> None:
    run(json.loads(Path(sys.argv[1]).read_text()), emit)


if __name__ == "__main__":
    main()
