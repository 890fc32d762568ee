"""A real Kubernetes control plane on 127.0.0.1 for the tests: etcd, kube-apiserver (TLS, RBAC,
ServiceAccount tokens), kube-controller-manager and kube-scheduler, on free ports.

The binaries are Kubernetes v1.20.2, built once by tests/k8s/install.sh (`make k8s`, which
`make test` runs) into ${XDG_CACHE_HOME:-~/.cache}/quiver/k8s-1.20.2/bin; QUIVER_K8S_BIN overrides.
tests/conftest.py starts one per session (fixture `control_plane`); each module takes a
namespace of its own. Pods run only where a test also asks for the `node` fixture
(tests/k8s/node.py: containerd + a kubelet registered with this API server).
"""

from __future__ import annotations

import json
import os
import secrets
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from kubernetes import client, config

from tests.certs import Authority, Pem
from tests.raycluster import free_port

VERSION = "1.20.2"
BIN = Path(
    os.environ.get("QUIVER_K8S_BIN")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "quiver" / f"k8s-{VERSION}" / "bin"
)
SERVICE_CIDR = "10.0.0.0/24"


def kubeconfig(path: Path, server: str, ca: Path, user: dict[str, str], namespace: str = "default") -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": "test", "user": user}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": namespace}}],
    }))
    return path


@dataclass
class ControlPlane:
    url: str  # https://127.0.0.1:PORT
    ca: Path
    admin: Path  # kubeconfig of a system:masters client certificate
    workdir: Path
    etcd: str  # http://127.0.0.1:PORT
    logs: dict[str, Path] = field(default_factory=dict)
    _commands: dict[str, list[str]] = field(default_factory=dict)
    _processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    _admin_pem: Pem | None = None
    _authority: Authority | None = None

    def identity(self, user: str, organization: str | None = None) -> Path:
        """A kubeconfig with a client certificate for `user` (and group `organization`) from the cluster's CA."""
        pem = self._authority.issue(user, server=False, organization=organization)
        return kubeconfig(self.workdir / f"{user.split(':')[-1]}.kubeconfig", self.url, self.ca,
                          {"client-certificate": str(pem.cert), "client-key": str(pem.key)})

    def api(self) -> client.ApiClient:
        """A client as the cluster's administrator."""
        return config.new_client_from_config(str(self.admin))

    def log(self, component: str, tail: int = 4000) -> str:
        return self.logs[component].read_text()[-tail:]

    def namespace(self, name: str) -> None:
        """Create the namespace and wait for its `default` ServiceAccount (the controller-manager's
        doing; the ServiceAccount admission plugin refuses pods until it exists)."""
        core = client.CoreV1Api(self.api())
        core.create_namespace({"metadata": {"name": name}})
        wait_for(lambda: core.list_namespaced_service_account(name, field_selector="metadata.name=default").items,
                 f"the default ServiceAccount of namespace {name}", 60)

    def restart_apiserver(self, timeout_s: float = 90) -> None:
        """Stop kube-apiserver, compact etcd's history, start it again: every watch breaks, and one
        resumed from a resourceVersion before the restart is answered 410 Gone."""
        stop_process(self._processes.pop("kube-apiserver"))
        revision = _etcd(self.etcd, "range", {"key": "AA=="})["header"]["revision"]  # any key: the header carries the revision
        _etcd(self.etcd, "compaction", {"revision": revision, "physical": True})
        self._start("kube-apiserver")
        _wait_ready(self, timeout_s)

    def _start(self, name: str) -> None:
        with self.logs[name].open("ab") as out:
            self._processes[name] = subprocess.Popen(
                [str(BIN / name), *self._commands[name]], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def _stop_all(self) -> None:
        for name in reversed(list(self._processes)):
            stop_process(self._processes.pop(name))

    def service_account_kubeconfig(self, namespace: str, name: str, path: Path) -> Path:
        """A kubeconfig that authenticates as the ServiceAccount, with a token from the TokenRequest
        API (what a pod's projected token is)."""
        request = {"spec": {"audiences": [], "expirationSeconds": 24 * 3600}}
        token = client.CoreV1Api(self.api()).create_namespaced_service_account_token(name, namespace, request).status.token
        return kubeconfig(path, self.url, self.ca, {"token": token}, namespace)


def wait_for(check: Callable[[], Any], what: str, timeout_s: float) -> Any:
    """`check()`'s first true result; errors of an API still starting count as false."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if result := check():
                return result
        except (OSError, client.ApiException):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.2)


@contextmanager
def control_plane(workdir: Path, timeout_s: float = 90) -> Iterator[ControlPlane]:
    """Start the control plane; yields once /readyz answers ok; stops every process on exit."""
    missing = [b for b in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler") if not (BIN / b).exists()]
    if missing:
        raise FileNotFoundError(f"{BIN} lacks {missing}: `make k8s` (tests/k8s/install.sh) builds them")
    pki = workdir / "pki"
    pki.mkdir(parents=True)
    authority = Authority(pki, "kubernetes-ca")
    serving = authority.issue("kube-apiserver", server=True)
    admin = authority.issue("admin", server=False, organization="system:masters")
    sa_key, sa_pub = _service_account_keys(pki)
    etcd_port, etcd_peer, api_port = free_port(), free_port(), free_port()
    url = f"https://127.0.0.1:{api_port}"
    admin_kubeconfig = kubeconfig(workdir / "admin.kubeconfig", url, authority.pem,
                                  {"client-certificate": str(admin.cert), "client-key": str(admin.key)})
    cp = ControlPlane(url, authority.pem, admin_kubeconfig, workdir, f"http://127.0.0.1:{etcd_port}",
                      _admin_pem=admin, _authority=authority)
    identity = cp.identity

    commands = {
        "etcd": [
            "--name", "test", "--data-dir", str(workdir / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{etcd_port}", "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-cluster", f"test=http://127.0.0.1:{etcd_peer}", "--initial-cluster-token", secrets.token_hex(8),
        ],
        "kube-apiserver": [
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={api_port}", "--insecure-port=0",
            f"--tls-cert-file={serving.cert}", f"--tls-private-key-file={serving.key}", f"--client-ca-file={authority.pem}",
            f"--service-account-key-file={sa_pub}", f"--service-account-signing-key-file={sa_key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}", "--authorization-mode=Node,RBAC",  # Node: the test node's kubelet
            "--endpoint-reconciler-type=none",  # no node, no kube-proxy: nothing to reconcile for
            "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,NodeRestriction,LimitRanger,DefaultStorageClass,ResourceQuota,"
            "MutatingAdmissionWebhook,ValidatingAdmissionWebhook",
        ],
    }
    commands["kube-controller-manager"] = [
        f"--kubeconfig={identity('system:kube-controller-manager')}", "--port=0", "--secure-port=0",
        f"--service-account-private-key-file={sa_key}", f"--root-ca-file={authority.pem}",
        "--use-service-account-credentials=true", "--leader-elect=false",
        "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service,-route",  # nodelifecycle: lifts a Ready node's not-ready taint
    ]
    commands["kube-scheduler"] = [f"--kubeconfig={identity('system:kube-scheduler')}", "--port=0", "--secure-port=0",
                                  "--leader-elect=false"]
    cp._commands = commands
    try:
        for name in commands:
            cp.logs[name] = workdir / f"{name}.log"
            cp._start(name)
            if name == "kube-apiserver":
                _wait_ready(cp, timeout_s)
        yield cp
    finally:
        cp._stop_all()


def _service_account_keys(pki: Path) -> tuple[Path, Path]:
    """The key pair that signs and checks ServiceAccount tokens, in the PEM forms Kubernetes 1.20 reads."""
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = pki / "sa.key", pki / "sa.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def stop_process(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _etcd(url: str, call: str, body: dict[str, Any]) -> dict[str, Any]:
    """etcd's v3 API through its JSON gateway."""
    request = urllib.request.Request(f"{url}/v3/kv/{call}", json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def _wait_ready(cp: ControlPlane, timeout_s: float) -> None:
    context = ssl.create_default_context(cafile=str(cp.ca))
    context.load_cert_chain(str(cp._admin_pem.cert), str(cp._admin_pem.key))

    def ready() -> bool:
        if cp._processes["kube-apiserver"].poll() is not None:
            raise RuntimeError(f"kube-apiserver exited:\n{cp.log('kube-apiserver')}")
        with urllib.request.urlopen(f"{cp.url}/readyz", context=context, timeout=5) as response:
            return response.status == 200

    try:
        wait_for(ready, "kube-apiserver's /readyz", timeout_s)
    except TimeoutError as exc:
        raise RuntimeError(f"{exc}\nkube-apiserver log:\n{cp.log('kube-apiserver')}\netcd log:\n{cp.log('etcd')}") from None
