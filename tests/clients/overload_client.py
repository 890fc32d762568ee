"""Load for the overload test, in its own process: measure what the server sustains, then send ten times that.

usage: overload_client.py ADDRESS MODEL [OVERLOAD_FACTOR] [OVERLOAD_S]
Phases, one after another on one grpc.aio channel, each printed as one JSON line when it ends:
  capacity  closed loop, 2 callers (what the variant admits, so none is shed) for 5 s: the
            sustainable rate R (answers per second) and normal latency;
  overload  open loop at OVERLOAD_FACTOR × R (default 10) for OVERLOAD_S (default 10 s);
  after     the capacity phase again, right after.
The open loop sends on a fixed schedule whatever the answers do, and counts latency from the
scheduled time. Each line: phase, rate, sent, answers by status, latency percentiles (ms) by
status, and the phase's start and end (time.monotonic(), the same clock as the test's).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import defaultdict

import grpc
import numpy as np

from quiver._proto import grpc_predict_v2_pb2 as pb

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


def report(phase: str, rate: float, latencies: dict[str, list[float]], start: float, end: float, sent: int) -> dict:
    line = {
        "phase": phase,
        "rate": round(rate, 1),
        "sent": sent,
        "answers": {status: len(values) for status, values in latencies.items()},
        "ms": {
            status: {q: round(float(np.percentile(values, q)) * 1000, 2) for q in (50, 99)} | {"max": round(max(values) * 1000, 2)}
            for status, values in latencies.items()
        },
        "start": start,
        "end": end,
    }
    print(json.dumps(line), flush=True)
    return line


async def main(address: str, model: str, factor: float = 10.0, overload_s: float = 10.0) -> None:
    payload = pb.ModelInferRequest(
        model_name=model,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 64])],
        raw_input_contents=[np.ones((1, 64), np.float32).tobytes()],
    ).SerializeToString()
    async with grpc.aio.insecure_channel(address) as channel:
        infer = channel.unary_unary(MODEL_INFER)

        async def call(since: float, latencies: dict[str, list[float]]) -> None:
            try:
                await infer(payload, timeout=10)
                status = "OK"
            except grpc.aio.AioRpcError as exc:
                status = exc.code().name
            latencies[status].append(time.monotonic() - since)

        async def closed(seconds: float, callers: int) -> tuple[dict, int]:
            latencies: dict[str, list[float]] = defaultdict(list)
            end, sent = time.monotonic() + seconds, 0

            async def caller() -> None:
                nonlocal sent
                while (start := time.monotonic()) < end:
                    sent += 1
                    await call(start, latencies)

            await asyncio.gather(*(caller() for _ in range(callers)))
            return latencies, sent

        async def opened(rate: float, seconds: float) -> tuple[dict, int]:
            latencies: dict[str, list[float]] = defaultdict(list)
            begin, tasks = time.monotonic(), []
            count = int(rate * seconds)
            for i in range(count):
                scheduled = begin + i / rate
                if (delay := scheduled - time.monotonic()) > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(call(scheduled, latencies)))
            await asyncio.gather(*tasks)
            return latencies, count

        async def sustained(phase: str) -> float:
            start = time.monotonic()
            latencies, sent = await closed(5.0, 2)
            end = time.monotonic()
            rate = len(latencies["OK"]) / (end - start)
            report(phase, rate, latencies, start, end, sent)
            return rate

        await closed(1.0, 2)  # warm-up, not reported
        capacity = await sustained("capacity")
        start = time.monotonic()
        latencies, sent = await opened(capacity * factor, overload_s)
        report("overload", capacity * factor, latencies, start, time.monotonic(), sent)
        await sustained("after")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], *map(float, sys.argv[3:])))
