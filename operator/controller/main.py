"""`quiver operator` (and `python -m quiver.operator`): flags → settings → kopf, for one namespace."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from .settings import OperatorSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE"), help="namespace to watch (default: $POD_NAMESPACE)")
    parser.add_argument("--store", type=Path, required=True, help="the shared model store, as mounted here and in the Jobs")
    parser.add_argument("--store-claim", help="PersistentVolumeClaim of the store, mounted into the optimization Jobs")
    parser.add_argument("--image", required=True, help="image the optimization Jobs run (`quiver optimize`)")
    parser.add_argument("--job-service-account", help="service account of the optimization Jobs")
    parser.add_argument("--ray-dashboard", required=True, help="the Ray head's dashboard URL (Serve REST API)")
    parser.add_argument(
        "--ray-token-file", type=Path, help="Ray's auth token (default: $RAY_AUTH_TOKEN when set)"
    )
    parser.add_argument("--routes-configmap", default="quiver-routes", help="the routers' route table (default: %(default)s)")
    parser.add_argument(
        "--router-metrics", action="append", default=[], help="a router's /metrics URL, read by the rollout gates (repeatable)"
    )
    parser.add_argument("--router-selector", help="label selector of the router pods whose /metrics gate rollouts")
    parser.add_argument("--router-metrics-port", type=int, default=8002)
    parser.add_argument("--pools", help="comma-separated node pools of the cluster; a placement on another is refused")
    parser.add_argument("--model-key", type=Path, help="key file on the Ray nodes that decrypts variants encrypted at rest")
    parser.add_argument(
        "--verify-key", type=Path, action="append", default=[],
        help="EC public key (PEM); when given, only versions signed by one of them deploy (repeatable)",
    )
    parser.add_argument("--encrypt-key-secret", help="Secret (key `key`) the optimization Jobs encrypt variants with")
    parser.add_argument("--sign-key-secret", help="Secret (key `key.pem`) the optimization Jobs sign versions with")
    parser.add_argument("--tick-s", type=float, default=5.0, help="how often rollouts are looked at (default: %(default)s)")
    parser.add_argument("--deploy-timeout-s", type=float, default=600.0)
    parser.add_argument("--liveness", help="kopf's liveness endpoint, e.g. http://0.0.0.0:8080/healthz")


def run_operator(args: argparse.Namespace) -> int:
    if not args.namespace:
        print("quiver: give --namespace (or set POD_NAMESPACE)")
        return 2
    token = args.ray_token_file.read_text().strip() if args.ray_token_file else os.environ.get("RAY_AUTH_TOKEN")
    settings = OperatorSettings(
        namespace=args.namespace,
        store=args.store,
        image=args.image,
        ray_dashboard=args.ray_dashboard,
        ray_token=token,
        store_claim=args.store_claim,
        job_service_account=args.job_service_account,
        routes_configmap=args.routes_configmap,
        router_metrics=tuple(args.router_metrics),
        router_selector=args.router_selector,
        router_metrics_port=args.router_metrics_port,
        pools=tuple(args.pools.split(",")) if args.pools else (),
        model_key=args.model_key,
        verify_keys=tuple(args.verify_key),
        encrypt_key_secret=args.encrypt_key_secret,
        sign_key_secret=args.sign_key_secret,
        tick_s=args.tick_s,
        deploy_timeout_s=args.deploy_timeout_s,
        liveness=args.liveness,
    )
    run(settings)
    return 0


def run(settings: OperatorSettings) -> None:
    # Imported here: every `quiver` command builds its parser from this module, and kopf and the
    # Kubernetes client take most of a second to import.
    import kopf

    from .handlers import register
    from .kube import Kube, connect
    from .rollout import Reconciler
    from .serve_api import ServeApi

    # kopf reports every handler run at INFO (a timer's every tick); its warnings and errors, or all at DEBUG.
    ours = logging.getLogger("quiver").getEffectiveLevel()
    logging.getLogger("kopf").setLevel(ours if ours <= logging.DEBUG else max(ours, logging.WARNING))
    reconciler = Reconciler(
        settings, Kube(connect(), settings.namespace), ServeApi(settings.ray_dashboard, settings.ray_token)
    )
    registry = kopf.OperatorRegistry()
    register(registry, reconciler, settings.tick_s)

    @kopf.on.login(registry=registry)
    def login(**kwargs: object) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)

    kopf_settings = kopf.OperatorSettings()
    # Scanning the cluster's CRDs and namespaces needs cluster-wide rights; one known namespace needs none.
    kopf_settings.scanning.disabled = True
    kopf_settings.posting.level = logging.INFO
    kopf.run(
        registry=registry,
        settings=kopf_settings,
        standalone=True,  # one replica (the chart's Deployment), no peering objects
        namespaces=[settings.namespace],
        liveness_endpoint=settings.liveness,
    )
