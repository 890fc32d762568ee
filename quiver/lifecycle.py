"""A router process's life, shared by `quiver serve` and `quiver router`: start, say ready, drain.

Prints one `ready: HOST:PORT models=a:1|2,... http=URL metrics=URL` line (HOST:PORT is gRPC's,
the URL REST's) once requests can be served, and on SIGINT/SIGTERM turns health to NOT_SERVING,
drains and stops; a signal that comes while the router still waits for its variants stops it at
once (a pod deleted while it starts).

Once a signal came nothing may keep the process alive: past the drain and `STOP_TIMEOUT_S` more
(closing connections, Ray's shutdown), every thread's stack is written to stderr, to say what
hung, and the process exits with status 1.

The router's event loop is uvloop's (`run_process`), as Ray's replicas' already are: grpc.aio, aiohttp
and the data plane's streams run on it unchanged, and the loop's own work per request (tasks,
futures, timers, sockets) costs less (benchmarks/NOTES.md, issue 18).
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import uvloop

from quiver.router import Router

logger = logging.getLogger(__name__)

STOP_TIMEOUT_S = 60.0


def run_process(main: Coroutine[Any, Any, int]) -> int:
    """Run a router process's main coroutine to its exit status, on a uvloop event loop."""
    return uvloop.run(main)


async def run_router(router: Router, until_ready: Callable[[], Awaitable[None]]) -> int:
    """Serve until a signal; `until_ready` may raise TimeoutError (exit status 1)."""
    settings = router.settings
    if settings.tls is None:
        logger.warning("serving plaintext gRPC%s on %s: no TLS", "" if settings.http_port is None else " and HTTP", settings.host)
    if settings.token_file is None:
        logger.warning("no --token-file: every caller may use every model")
    port = await router.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    starting = asyncio.create_task(until_ready(), name="quiver-until-ready")
    signalled = asyncio.create_task(stop.wait(), name="quiver-until-signal")
    await asyncio.wait({starting, signalled}, return_when=asyncio.FIRST_COMPLETED)
    if starting.done():
        try:
            starting.result()
        except TimeoutError as exc:
            logger.error("%s", exc)
            signalled.cancel()
            await router.stop()
            return 1
        models = ",".join(f"{name}:{'|'.join(versions)}" for name, versions in router.routes.models().items())
        scheme = "http" if settings.tls is None else "https"
        http = f" http={scheme}://{settings.host}:{router.http_port}" if router.http_port else ""
        metrics = f" metrics=http://{settings.host}:{router.metrics_port}/metrics" if router.metrics_port else ""
        print(f"ready: {settings.host}:{port} models={models}{http}{metrics}", flush=True)
        await signalled
    else:
        starting.cancel()
        logger.warning("stopping before every variant was ready")
    faulthandler.dump_traceback_later(settings.drain_delay_s + settings.grace_period_s + STOP_TIMEOUT_S, exit=True)
    logger.warning("shutting down: draining requests for up to %.0f s", settings.grace_period_s)
    await router.stop()
    return 0
