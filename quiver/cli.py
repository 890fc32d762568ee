"""The `quiver` command: parses arguments into typed settings, once, and runs a subcommand."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from quiver import __version__
from quiver.router.logcontext import RequestIdFilter

if TYPE_CHECKING:
    from quiver.router import RouterSettings


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s%(request)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    logging.getLogger("quiver").setLevel(args.log_level)  # ours only: Ray's and gRPC's debug output is its own
    return args.run(args)


def _router_settings(args: argparse.Namespace) -> RouterSettings | None:
    """The router's settings from the flags `quiver serve` and `quiver router` share; None if they conflict."""
    from quiver.router import RouterSettings, TlsSettings
    from quiver.router.tracing import TracingSettings

    if (args.tls_cert is None) != (args.tls_key is None) or (args.tls_client_ca and not args.tls_cert):
        print("quiver: --tls-cert and --tls-key go together (and --tls-client-ca needs them)", file=sys.stderr)
        return None
    if args.tls_cert is None and not args.insecure and not _loopback(args.host):
        print(f"quiver: refusing plaintext on {args.host}: give --tls-cert/--tls-key, or --insecure", file=sys.stderr)
        return None
    return RouterSettings(
        host=args.host,
        port=args.port,
        http_port=None if args.http_port < 0 else args.http_port,
        max_request_bytes=args.max_request_mb << 20,
        metrics_port=None if args.metrics_port < 0 else args.metrics_port,
        dispatch_timeout_s=args.dispatch_timeout_s,
        replacement_wait_s=args.replacement_wait_s,
        traffic_file=getattr(args, "traffic_file", None),
        routes_file=getattr(args, "routes", None),
        store=getattr(args, "store", None),
        tls=TlsSettings(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None,
        token_file=args.token_file,
        tracing=TracingSettings.from_environment(args.otel_endpoint, os.environ),
        direct=not args.no_direct,
    )


def _serve(args: argparse.Namespace) -> int:
    # Imported here: the router's generated protobuf module must stay out of processes that
    # only optimize (and of test processes, which load tritonclient's copy of the protocol).
    from quiver.embedded import ServeSettings, serve_locally

    router = _router_settings(args)
    if router is None:
        return 2
    try:
        router = _with_shadow_and_capture(router, args)
    except (OSError, ValueError) as exc:
        print(f"quiver: {exc}", file=sys.stderr)
        return 2
    return serve_locally(
        ServeSettings(
            model=args.model,
            name=args.name,
            address=args.address,
            pools=tuple(args.pools.split(",")) if args.pools else None,
            num_cpus=args.num_cpus,
            model_key=args.model_key,
            verify_keys=tuple(args.verify_key),
            router=router,
        )
    )


def _with_shadow_and_capture(router: RouterSettings, args: argparse.Namespace) -> RouterSettings:
    """The --shadow-rate and --capture* flags of `quiver serve` and `quiver router` (ValueError naming the flag)."""
    import dataclasses

    from quiver.router.shadow import ShadowSettings
    from quiver.serving.capture import CaptureSettings
    from quiver.serving.crypto import read_key

    capture = None
    if args.capture is not None:
        key = read_key(args.model_key) if args.model_key else None
        capture = CaptureSettings(args.capture, args.capture_rate, int(args.capture_max_mb * (1 << 20)), key=key)
    return dataclasses.replace(router, shadow=ShadowSettings(sample_rate=args.shadow_rate), capture=capture)


def _route(args: argparse.Namespace) -> int:
    from quiver.cluster import ClusterRouterSettings, route_cluster

    router = _router_settings(args)
    if router is None:
        return 2
    try:
        router = _with_shadow_and_capture(router, args)
    except (OSError, ValueError) as exc:
        print(f"quiver: {exc}", file=sys.stderr)
        return 2
    return route_cluster(ClusterRouterSettings(ray_address=args.ray_address, join=args.join, node_ip=args.node_ip, router=router))


def _operate(args: argparse.Namespace) -> int:
    from quiver.operator.main import run_operator

    return run_operator(args)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _optimize(args: argparse.Namespace) -> int:
    from quiver.optimizing import run_optimize

    return run_optimize(args)


def _tune(args: argparse.Namespace) -> int:
    from quiver.tuning import run_tune

    return run_tune(args)


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps descriptions and help to the terminal, but keeps the examples (the epilog) line by line."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith(_EXAMPLES):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


_EXAMPLES = "examples:\n"


def _examples(*lines: str) -> str:
    """The epilog of a command's --help: commands a user can type as they are (tests/test_cli_help.py parses them)."""
    return _EXAMPLES + "".join(f"  {line}\n" for line in lines)


def build_parser() -> argparse.ArgumentParser:
    """The `quiver` command line (the docs' CLI reference can be generated from it)."""
    parser = argparse.ArgumentParser(
        prog="quiver",
        description="Serve optimized ONNX model variants behind one Open Inference Protocol endpoint (gRPC and "
        "REST). `quiver COMMAND --help` shows a command's options and examples.",
        formatter_class=_HelpFormatter,
        epilog=_examples(
            "quiver serve                 # the bundled example model on 127.0.0.1:8001",
            "quiver optimize model.onnx --name mymodel --version 1 --store ./store \\",
            "    --eval eval.npz          # measured fp16 and int8 variants of your model",
            "quiver serve ./store         # every version in the store, all variants",
        ),
    )
    parser.add_argument("--version", action="version", version=f"quiver {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True)

    # What the router listens on and whom it admits: shared by `serve` and `router`.
    listener = argparse.ArgumentParser(add_help=False)
    listener.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    listener.add_argument("--port", type=int, default=8001, help="gRPC port; 0 picks a free one (default: %(default)s)")
    listener.add_argument(
        "--http-port", type=int, default=8000,
        help="REST (KServe v2 / Triton HTTP) port; 0 picks a free one, -1 turns it off (default: %(default)s)",
    )
    listener.add_argument(
        "--max-request-mb", type=int, default=64, help="largest request accepted, in MiB (default: %(default)s)"
    )
    listener.add_argument(
        "--metrics-port", type=int, default=8002, help="Prometheus /metrics port; 0 picks one, -1 turns it off (default: %(default)s)"
    )
    listener.add_argument(
        "--dispatch-timeout-s", type=float, default=30.0, help="longest wait for a variant before another is tried"
    )
    listener.add_argument(
        "--replacement-wait-s", type=float, default=30.0,
        help="how long requests wait (within their deadline) for a variant's replica that just died to be replaced "
        "before failing; 0: fail at once (default: %(default)s)",
    )
    listener.add_argument("--tls-cert", type=Path, help="server certificate (PEM)")
    listener.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    listener.add_argument("--tls-client-ca", type=Path, help="CA whose client certificates are required (mTLS)")
    listener.add_argument("--token-file", type=Path, help="bearer tokens and their models, re-read when it changes")
    listener.add_argument(
        "--insecure", action="store_true", help="allow plaintext on a non-loopback address (loopback is always allowed)"
    )
    listener.add_argument(
        "--otel-endpoint", help="send OpenTelemetry traces (OTLP/gRPC) here, e.g. http://collector:4317 (default: off, "
        "unless the standard OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT or OTEL_TRACES_EXPORTER variables say otherwise)"
    )
    listener.add_argument("--shadow-rate", type=float, help="share of requests compared with the reference, for variants whose spec sets none")
    listener.add_argument(
        "--capture", type=Path, metavar="DIR",
        help="capture sampled live inputs here for recalibration, never for a token whose scope says no-capture (default: off)",
    )
    listener.add_argument(
        "--capture-rate", type=float, default=0.01, help="share of requests captured, where the route table sets none for the model (default: %(default)s)"
    )
    listener.add_argument("--capture-max-mb", type=float, default=256, help="disk per model version (default: %(default)s)")
    listener.add_argument(
        "--no-direct", action="store_true",
        help="call replicas only through Serve's handles, not on their data planes (slower; for comparison or diagnosis)",
    )

    serve = commands.add_parser(
        "serve",
        parents=[common, listener],
        help="serve a model on a local Ray instance (router → Ray Serve replicas)",
        description="Serve MODEL.onnx or every model version in STORE_DIR; with neither, the bundled example model.",
        formatter_class=_HelpFormatter,
        epilog=_examples(
            "quiver serve",
            "quiver serve model.onnx --name digits --num-cpus 4",
            "quiver serve ./store --host 0.0.0.0 --tls-cert server.pem \\",
            "    --tls-key server.key --token-file tokens.json",
        ),
    )
    serve.set_defaults(run=_serve)
    serve.add_argument("model", nargs="?", type=Path, metavar="MODEL.onnx | STORE_DIR")
    serve.add_argument("--name", help="model name for a single .onnx file (default: the file stem)")
    serve.add_argument("--num-cpus", type=int, help="CPUs the local Ray instance may use (default: all)")
    serve.add_argument("--traffic-file", type=Path, help="JSON version weights per model, re-read when it changes")
    serve.add_argument(
        "--verify-key", type=Path, action="append", default=[],
        help="EC public key (PEM); when given, only versions signed by one of these keys load (repeatable)",
    )
    serve.add_argument("--model-key", type=Path, help="32-byte key file that decrypts variants encrypted at rest")
    serve.add_argument("--address", help="join this running Ray cluster instead of starting a local instance")
    serve.add_argument("--pools", help="comma-separated pools of the local node (default: cpu, plus gpu when there is one)")

    router = commands.add_parser(
        "router",
        parents=[common, listener],
        help="the router of a cluster: serve the routes the operator writes",
        description="Join a Ray cluster and route requests to the Serve applications the routes file names.",
        formatter_class=_HelpFormatter,
        epilog=_examples(
            "quiver router --ray-address quiver-ray-head-svc:6379 --join \\",
            "    --store /models --routes /etc/quiver/routes/routes.json",
        ),
    )
    router.set_defaults(run=_route)
    router.add_argument("--ray-address", required=True, help="the Ray head's GCS address, HOST:PORT")
    router.add_argument(
        "--join", action="store_true", help="first make this container a Ray node without CPUs or GPUs (router pods)"
    )
    router.add_argument(
        "--node-ip", help="with --join: the address this node advertises to the cluster (default: Ray's choice, the pod's IP)"
    )
    router.add_argument("--store", type=Path, required=True, help="the shared model store (manifests are read from it)")
    router.add_argument("--routes", type=Path, required=True, help="the routes file the operator writes (a mounted ConfigMap)")
    router.add_argument("--model-key", type=Path, help="32-byte key file: captured segments are encrypted with it")

    operator = commands.add_parser(
        "operator",
        parents=[common],
        help="run the ModelDeployment operator (kopf)",
        description="Watch ModelDeployments in a namespace: optimize, deploy, roll out, roll back.",
        formatter_class=_HelpFormatter,
        epilog=_examples(
            "quiver operator --namespace quiver --store /models --image quiver:0.1.0 \\",
            "    --ray-dashboard http://quiver-ray-head-svc:8265 \\",
            "    --router-selector app.kubernetes.io/component=router",
        ),
    )
    operator.set_defaults(run=_operate)
    from quiver.operator.main import add_arguments as add_operator_arguments

    add_operator_arguments(operator)

    from quiver.optimizing import add_arguments

    optimize = commands.add_parser(
        "optimize",
        parents=[common],
        help="make measured, accuracy-gated variants of an ONNX model in a store",
        description="Build variants of MODEL.onnx, measure them on an eval set, publish those within the accuracy limit.",
        formatter_class=_HelpFormatter,
        epilog=_examples(
            "quiver optimize model.onnx --name digits --version 1 --store ./store \\",
            "    --eval eval.npz --calibration calib.npz",
            "quiver optimize encoder.onnx --name minilm --version 2 --store ./store \\",
            "    --eval eval.npz --metric cosine --gate p5 --max-accuracy-drop 0.02",
        ),
    )
    optimize.set_defaults(run=_optimize)
    add_arguments(optimize)

    from quiver.tuning import add_arguments as add_tune_arguments

    tune = commands.add_parser(
        "tune",
        parents=[common],
        help="measure serving settings per variant and record the best in the store",
        description="Search each variant's threads, batching and replicas through a real replica under a time "
        "budget; record the chosen settings and latency profile in the manifest, and write tune.html/tune.png.",
        formatter_class=_HelpFormatter,
        epilog=_examples(
            "quiver tune ./store --model digits --version 1 --slo-p99-ms 20",
            "quiver tune ./store --model minilm --version 2 --variants int8-static \\",
            "    --objective latency --budget-s 120",
        ),
    )
    tune.set_defaults(run=_tune)
    add_tune_arguments(tune)
    return parser


if __name__ == "__main__":
    sys.exit(main())
