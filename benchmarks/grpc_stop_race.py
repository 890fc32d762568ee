"""Why a restarting router's clients check its health: gRPC core's answer to calls at a server's stop.

    python -m benchmarks.grpc_stop_race [--runs 10]

No Quiver code: a bare grpc.aio server (a 1 ms handler) under steady load from four client
threads, stopped the way the router stops (health NOT_SERVING, a 1 s drain, then
`server.stop(grace)`), `--runs` times for each of two clients: one with a plain channel, one
that checks the server's health (service config: round_robin with `healthCheckConfig`, as
tests/clients/retrying_client.py). Printed: answers by status for each. A call that reaches the
server in the instant it stops, before the application took it, is ended by gRPC core with
CANCELLED (grpc/grpc#41785), which no retry policy retries; the health-checking client stopped
sending when the drain began. Writes benchmarks/results/grpc-stop-race-<stamp>.{json,md}
(benchmarks/provenance.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from benchmarks import provenance

SERVICE = "race.Echo"
HEALTH_CHECKED = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": ""},
}


async def serve_then_stop(port_box: list[int], started: threading.Event, serve_s: float, drain_s: float) -> None:
    server = grpc.aio.server()

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.sleep(0.001)
        return request

    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(echo)}),))
    status = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(status, server)
    port_box.append(server.add_insecure_port("127.0.0.1:0"))
    await server.start()
    await status.set("", health_pb2.HealthCheckResponse.SERVING)
    started.set()
    await asyncio.sleep(serve_s)
    await status.enter_graceful_shutdown()  # as Router.stop: NOT_SERVING, drain, then stop
    await asyncio.sleep(drain_s)
    await server.stop(5.0)


def one_run(health_checked: bool, threads: int = 4) -> Counter[str]:
    port_box: list[int] = []
    started = threading.Event()
    server = threading.Thread(target=lambda: asyncio.run(serve_then_stop(port_box, started, 0.5, 1.0)))
    server.start()
    started.wait()
    options = [("grpc.service_config", json.dumps(HEALTH_CHECKED))] if health_checked else []
    answers: Counter[str] = Counter()
    stop = threading.Event()
    with grpc.insecure_channel(f"127.0.0.1:{port_box[0]}", options=options) as channel:
        call = channel.unary_unary(f"/{SERVICE}/Echo")

        def client() -> None:
            while not stop.is_set():
                try:
                    call(b"x", timeout=2)
                    answers["OK"] += 1
                except grpc.RpcError as exc:
                    answers[exc.code().name] += 1
                    time.sleep(0.01)

        clients = [threading.Thread(target=client) for _ in range(threads)]
        for thread in clients:
            thread.start()
        server.join()
        time.sleep(0.2)
        stop.set()
        for thread in clients:
            thread.join()
    return answers


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.grpc_stop_race", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=provenance.RESULTS)
    args = parser.parse_args()
    run = provenance.begin()
    rows = []
    for health_checked in (False, True):
        total: Counter[str] = Counter()
        cancelled_runs = 0
        for _ in range(args.runs):
            answers = one_run(health_checked)
            total.update(answers)
            cancelled_runs += answers["CANCELLED"] > 0
        client = "health-checking client" if health_checked else "plain client"
        print(f"{client}: {args.runs} stops, CANCELLED in {cancelled_runs} of them; answers {dict(total)}")
        rows.append({"client": client, "stops": args.runs, "stops_with_cancelled": cancelled_runs,
                     "answers": dict(sorted(total.items()))})
    body = markdown(rows)
    paths = provenance.write("grpc-stop-race", run, {"settings": {"runs": args.runs}, "rows": rows}, body,
                             "gRPC core's answers to calls at a server's stop, by client", out=args.out)
    print(body)
    print("written:", *paths)


def markdown(rows: list[dict]) -> str:
    lines = [
        "A bare grpc.aio server (a 1 ms handler) under load from four client threads, stopped as the router stops "
        "(health NOT_SERVING, a 1 s drain, `server.stop(5.0)`), once per stop; a plain channel, then one that checks "
        "the server's health (round_robin with `healthCheckConfig`).",
        "",
        "| client | stops | stops with a CANCELLED answer | answers, by status |",
        "|---|---:|---:|---|",
    ]
    for row in rows:
        answers = ", ".join(f"{status} {count:,}" for status, count in row["answers"].items())
        lines.append(f"| {row['client']} | {row['stops']} | {row['stops_with_cancelled']} | {answers} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
