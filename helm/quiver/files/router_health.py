"""gRPC health check of the Quiver router, for its Kubernetes probes and for `helm test`.

The chart mounts this file from a ConfigMap and runs it with the image's Python (grpcio and
cryptography are Quiver dependencies). It exists because the kubelet's native gRPC probe speaks
plaintext only, while the chart serves TLS by default.

    python router_health.py HOST:PORT --ready|--alive [--tls-cert CERT [--client-cert C --client-key K]]

--ready passes only when the server answers SERVING (readiness, `helm test`); --alive passes on
any answer, NOT_SERVING included, so a router that is draining or still joining Ray is not
restarted (liveness). With --tls-cert the router's own certificate is the trust anchor and its
first DNS (or IP) name the expected server name, so the check needs no CA bundle and works
whatever address it dials (the pod's loopback or the Service). --client-cert/--client-key are
presented when the router requires client certificates (mTLS). Exit 0 on success, 1 otherwise,
with one line on stderr saying why. (Not named grpc_health.py: Python puts a script's own
directory first on sys.path, and that name would shadow the grpc_health package it imports.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address", help="HOST:PORT of the router's gRPC port")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--ready", action="store_true", help="pass only on SERVING")
    mode.add_argument("--alive", action="store_true", help="pass on any health answer")
    parser.add_argument("--tls-cert", type=Path, help="the router's certificate (PEM); enables TLS")
    parser.add_argument("--client-cert", type=Path, help="client certificate to present (mTLS)")
    parser.add_argument("--client-key", type=Path, help="its private key")
    parser.add_argument("--service", default="", help="health service name (default: the whole server)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default: %(default)s)")
    args = parser.parse_args(argv)

    try:
        channel = _channel(args)
    except (OSError, ValueError) as error:
        print(f"health: cannot set up TLS: {error}", file=sys.stderr)
        return 1
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as error:
            print(f"health: {args.address}: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if args.ready and reply.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"health: {args.address}: {status}", file=sys.stderr)
        return 1
    print(f"health: {args.address}: {status}")
    return 0


def _channel(args: argparse.Namespace) -> grpc.Channel:
    if args.tls_cert is None:
        return grpc.insecure_channel(args.address)
    server_pem = args.tls_cert.read_bytes()
    client = (None, None)
    if args.client_cert or args.client_key:
        if not (args.client_cert and args.client_key):
            raise ValueError("--client-cert and --client-key go together")
        client = (args.client_key.read_bytes(), args.client_cert.read_bytes())
    credentials = grpc.ssl_channel_credentials(
        root_certificates=server_pem, private_key=client[0], certificate_chain=client[1]
    )
    options = [("grpc.ssl_target_name_override", _server_name(server_pem))]
    return grpc.secure_channel(args.address, credentials, options=options)


def _server_name(pem: bytes) -> str:
    """The first name the certificate is valid for: what the TLS handshake will check."""
    from cryptography import x509

    certificate = x509.load_pem_x509_certificate(pem)
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise ValueError("the router's certificate has no subjectAltName") from None
    for kind in (x509.DNSName, x509.IPAddress):
        found = names.get_values_for_type(kind)
        if found:
            # A wildcard name matches any one label in its place.
            return str(found[0]).replace("*.", "probe.", 1)
    raise ValueError("the router's certificate names no DNS name or IP address")


if __name__ == "__main__":
    sys.exit(main())
