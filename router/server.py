"""The router's servers: gRPC (the inference service, grpc.health.v1, server reflection) and REST.

Both doors serve the same operations (router/operations.py) on one event loop: the gRPC servicer
(router/servicer.py) and the KServe v2 / Triton HTTP endpoints (router/rest.py).

Runs in any process that is a Ray driver on a node with a raylet (`quiver serve` locally;
router pods that are Ray nodes on a cluster). `Router.start` binds and serves; `Router.stop`
turns health to NOT_SERVING (and REST's ready to 400) first, keeps serving for a short drain
delay, then stops taking requests and finishes those in flight within the grace period.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from http.server import HTTPServer
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from quiver._proto import grpc_predict_v2_pb2 as pb
from quiver._proto import grpc_predict_v2_pb2_grpc as pb_grpc
from quiver.serving.capture import CaptureSettings

from .auth import Authenticator
from .catalog import Catalog
from .operations import Operations
from .dispatch import Dispatcher
from .endpoints import Endpoints
from .health import ProbedReadiness, ServingHealth, probe_via
from .metrics import RouterMetrics
from .replacement import Changes, ReplacementWait
from .repository import ON_CLUSTER, NO_STORE, Deployer, Repository, StoreRepository
from .rest import RestServer, ssl_context
from .routes import RouteTable
from .servicer import InferenceServicer
from .shadow import ShadowSettings
from .state_metrics import StateMetrics
from .tracing import Tracing, TracingSettings, provider_for
from .traffic import Traffic

logger = logging.getLogger(__name__)

INFERENCE_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


@dataclass(frozen=True)
class TlsSettings:
    """Server certificate and key (PEM); with a client CA, clients must present a certificate it signed (mTLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        ca = self.client_ca.read_bytes() if self.client_ca else None
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.cert.read_bytes())], root_certificates=ca, require_client_auth=ca is not None
        )

    def ssl_context(self) -> ssl.SSLContext:
        """The same certificate, key and client CA for the REST door."""
        return ssl_context(str(self.cert), str(self.key), str(self.client_ca) if self.client_ca else None)


@dataclass(frozen=True)
class RouterSettings:
    host: str = "127.0.0.1"
    port: int = 8001
    # REST (KServe v2 / Triton HTTP) beside gRPC; None: not served. 8000/8001/8002 as Triton's.
    http_port: int | None = 8000
    # Decoded input tensors of one request may not exceed this; gRPC refuses larger messages
    # (RESOURCE_EXHAUSTED) before they are read, with a little room for the envelope.
    max_request_bytes: int = 64 << 20
    grace_period_s: float = 10.0
    # After health turns NOT_SERVING the router keeps taking requests this long, so that load
    # balancers notice before the listener closes: calls that arrived but were not picked up
    # yet would otherwise be cancelled by the server's stop.
    drain_delay_s: float = 1.0
    metrics_port: int | None = 8002  # Prometheus /metrics over HTTP; None: not served
    dispatch_timeout_s: float = 30.0  # longest wait for a variant before trying another
    # A request that finds its variant's last replica just gone waits this long (within its
    # deadline) for Serve's replacement rather than failing; 0: fail at once (router/replacement.py).
    replacement_wait_s: float = 30.0
    traffic_file: Path | None = None  # version weights, watched (see router/traffic.py)
    # A cluster router's route table, written by the operator (see router/catalog.py), and the
    # store its manifests are read from. When set, the versions it names are what is served.
    routes_file: Path | None = None
    store: Path | None = None
    tls: TlsSettings | None = None  # None: plaintext
    token_file: Path | None = None  # bearer tokens and their models, watched (see router/auth.py); None: no auth
    tracing: TracingSettings = TracingSettings()  # OpenTelemetry; off by default (see router/tracing.py)
    # Call replicas on their data planes when the replica directory lists them (router/endpoints.py);
    # False: every call goes through Serve's handles.
    direct: bool = True
    shadow: ShadowSettings = ShadowSettings()  # comparisons with each version's reference (router/shadow.py)
    capture: CaptureSettings | None = None  # live inputs kept for recalibration; None: off


class Router:
    def __init__(
        self, routes: RouteTable, settings: RouterSettings, tracer_provider: object | None = None, deployer: Deployer | None = None
    ) -> None:
        """`deployer`: how `quiver serve STORE` deploys, so that versions load and unload (router/repository.py)."""
        self.settings = settings
        self.routes = routes
        envelope = 1 << 20
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", settings.max_request_bytes + envelope),
                ("grpc.max_send_message_length", -1),
                # Without this a second server could bind the same port and steal half the traffic.
                ("grpc.so_reuseport", 0),
            ]
        )
        self.metrics = RouterMetrics()
        changes = Changes()  # what the router learns of replicas wakes requests waiting for one
        self.endpoints = Endpoints(on_change=changes.notify) if settings.direct else None
        # Serve's view, and replicas on the data plane, less variants that stopped answering (router/health.py).
        self.readiness = ProbedReadiness(
            routes, data_plane=self.endpoints, probe=probe_via(self.endpoints), on_change=changes.notify, metrics=self.metrics
        )
        self.traffic = Traffic(routes.models(), settings.traffic_file)
        self.catalog = (
            Catalog(routes, self.traffic, settings.store or Path("."), settings.routes_file, self.readiness, self.metrics.show_routes)
            if settings.routes_file
            else None
        )
        self.state_metrics = StateMetrics(self.metrics, routes, self.readiness, self.endpoints, None if self.catalog else self.traffic)
        self.auth = Authenticator(settings.token_file)
        # Tracing, when on, watches dispatch's calls and wraps ModelInfer; when off it is not there at all.
        provider = tracer_provider or provider_for(settings.tracing)
        self.tracing = Tracing(provider) if provider is not None else None
        watchers = [self.readiness.reachability, *([self.tracing] if self.tracing else [])]
        self.dispatcher = dispatcher = Dispatcher(
            self.metrics, self.readiness, settings.dispatch_timeout_s, watchers=watchers, endpoints=self.endpoints,
            replacement=ReplacementWait(settings.replacement_wait_s, changes), shadow=settings.shadow, capture=settings.capture,
            split=lambda: self.traffic.split, lookup=routes.lookup,
        )
        if self.catalog is not None:
            repository = Repository(routes, self.readiness, ON_CLUSTER)
        elif deployer is not None:
            repository = StoreRepository(routes, self.readiness, self.traffic, deployer)
        else:
            repository = Repository(routes, self.readiness, NO_STORE)
        operations = Operations(
            routes, self.auth, self.traffic, self.readiness, dispatcher, self.metrics, settings.max_request_bytes,
            repository=repository,
        )
        servicer = InferenceServicer(operations)
        if self.tracing is not None:
            servicer.ModelInfer = self.tracing.infer(servicer.ModelInfer)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        self.serving_health = ServingHealth(INFERENCE_SERVICE, self._health, routes, self.readiness)
        reflection.enable_server_reflection(
            [INFERENCE_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME], self._server
        )
        self.port: int | None = None
        self.http_port: int | None = None
        self._rest = (
            RestServer(
                operations, settings.host, settings.http_port, settings.max_request_bytes + envelope, settings.grace_period_s,
                settings.tls.ssl_context() if settings.tls else None, self.tracing,
            )
            if settings.http_port is not None
            else None
        )
        self._metrics_server: HTTPServer | None = None
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> int:
        """Bind and start serving; returns the bound port (useful with port 0)."""
        address = f"{self.settings.host}:{self.settings.port}"
        if self.settings.tls is None:
            self.port = self._server.add_insecure_port(address)
        else:
            self.port = self._server.add_secure_port(address, self.settings.tls.credentials())
        if self.catalog is None:  # a cluster router may start before Serve does: its watch() copes
            await self.readiness.refresh()
        self.traffic.reload()
        self.auth.file.reload()
        self._tasks.append(asyncio.create_task(self.readiness.watch(), name="quiver-readiness"))
        self._tasks.append(asyncio.create_task(self.readiness.reachability.watch(), name="quiver-probes"))
        self._tasks.append(asyncio.create_task(self.traffic.file.watch(), name="quiver-traffic"))
        self._tasks.append(asyncio.create_task(self.auth.file.watch(), name="quiver-tokens"))
        if self.catalog is not None:
            await self.catalog.refresh()
            self._tasks.append(asyncio.create_task(self.catalog.watch(), name="quiver-routes"))
        if self.endpoints is not None:
            await self.endpoints.refresh()
            self._tasks.append(asyncio.create_task(self.endpoints.follow(), name="quiver-replica-directory"))
        await self._server.start()
        if self._rest is not None:
            self.http_port = await self._rest.start()
        if self.settings.metrics_port is not None:
            self._metrics_server = self.metrics.serve(self.settings.host, self.settings.metrics_port)
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        # The inference service follows ServerReady: NOT_SERVING while some model version has no variant that answers.
        await self.serving_health.update()
        self._tasks.append(asyncio.create_task(self.serving_health.watch(), name="quiver-health"))
        self._tasks.append(asyncio.create_task(self.state_metrics.watch(), name="quiver-state-metrics"))
        logger.info("router listening on %s:%d", self.settings.host, self.port)
        return self.port

    @property
    def metrics_port(self) -> int | None:
        return self._metrics_server.server_port if self._metrics_server else None

    async def stop(self) -> None:
        # Probes see NOT_SERVING before the listener goes, so traffic moves away first.
        await self._health.enter_graceful_shutdown()
        if self._rest is not None:
            self._rest.drain()
        await asyncio.sleep(self.settings.drain_delay_s)
        await asyncio.gather(self._server.stop(self.settings.grace_period_s), *([self._rest.stop()] if self._rest else []))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.dispatcher.shadow.close()  # after the last request: what the capture holds is written
        if self.endpoints is not None:
            await self.endpoints.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)  # sends the spans still buffered
