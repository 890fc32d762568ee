"""The operator's settings, read once from the command line (operator/main.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class OperatorSettings:
    namespace: str
    store: Path  # the shared model store, at the same path in this pod, the Jobs and the Ray pods
    image: str  # runs the optimization Jobs
    ray_dashboard: str  # the Ray head's dashboard URL: the Serve REST API
    ray_token: str | None = None  # Ray's token authentication (RAY_AUTH_TOKEN)
    store_claim: str | None = None  # the store's PersistentVolumeClaim, mounted into the Jobs
    job_service_account: str | None = None
    routes_configmap: str = "quiver-routes"  # the route table the routers mount
    router_metrics: tuple[str, ...] = ()  # /metrics URLs of routers, when not found by selector
    router_selector: str | None = None  # label selector of the router pods whose metrics gate rollouts
    router_metrics_port: int = 8002
    pools: tuple[str, ...] = ()  # the cluster's node pools; a placement on another is refused
    model_key: Path | None = None  # on the Ray nodes: decrypts variants encrypted at rest
    verify_keys: tuple[Path, ...] = ()  # here and on the Ray nodes: a version must be signed by one of them
    # Secrets the optimization Jobs mount: the key that encrypts what they publish (key `key`)
    # and the private key that signs it (key `key.pem`).
    encrypt_key_secret: str | None = None
    sign_key_secret: str | None = None
    tick_s: float = 5.0  # how often a rollout's state is looked at
    deploy_timeout_s: float = 600.0  # a version whose applications do not run by then fails
    liveness: str | None = None  # kopf's liveness endpoint, e.g. http://0.0.0.0:8080/healthz
