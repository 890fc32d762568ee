"""A real node for the test control plane: containerd (Debian's, with runc) and Kubernetes
v1.20.2's kubelet (tests/k8s/install.sh), registered with the fixture's API server on 127.0.0.1.

Pods are really scheduled, created by containerd and run by runc; their images come from local
tarballs (tests/k8s/image.py) imported with `ctr`, never from a registry. Nothing leaves loopback:
the kubelet listens on 127.0.0.1 and reports it as the node's address (its loopback test patch),
and a pod's network namespace has only `lo` (see _CNI_PLUGIN). The kubelet and containerd write
under /var/lib/kubelet, /var/log/pods and /run/containerd whatever their flags: removed on exit.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client

from tests.k8s.control_plane import BIN, ControlPlane, stop_process, wait_for
from tests.k8s.image import save
from tests.raycluster import free_port

PAUSE = "quiver.local/pause:test"
_OUTSIDE = (Path("/var/lib/kubelet"), Path("/var/log/pods"), Path("/var/log/containers"), Path("/run/containerd"))

# containerd's CRI wants the pod's network to report an address on `eth0`. The pod gets a network
# namespace of its own with only `lo` up (the loopback plugin, run first); this plugin then reports
# 127.0.0.1 as that address without creating anything, so no interface or route is added to the
# host. (A boundary stand-in: a real CNI plugin would give the pod an address off loopback.)
_CNI_PLUGIN = """#!/bin/sh
case "$CNI_COMMAND" in
  ADD) echo '{"cniVersion":"0.4.0","interfaces":[{"name":"eth0","sandbox":"'"$CNI_NETNS"'"}],"ips":[{"version":"4","address":"127.0.0.1/8","interface":0}]}' ;;
  VERSION) echo '{"cniVersion":"0.4.0","supportedVersions":["0.3.0","0.3.1","0.4.0"]}' ;;
esac
"""


@dataclass
class Node:
    name: str
    containerd_socket: Path
    logs: dict[str, Path]

    def load_image(self, tarball: Path) -> None:
        subprocess.run(["ctr", "--address", str(self.containerd_socket), "-n", "k8s.io", "images", "import", str(tarball)],
                       check=True, capture_output=True)

    def pod_logs(self, namespace: str, tail: int = 4000) -> str:
        """What the namespace's containers wrote, from the kubelet's own files (the API server is
        given no client certificate for the kubelet, so `kubectl logs` is not to be had)."""
        return "\n".join(f"{path}:\n{path.read_text(errors='replace')[-tail:]}"
                         for path in sorted(Path("/var/log/pods").glob(f"{namespace}_*/*/*.log")))

    def log(self, component: str, tail: int = 4000) -> str:
        return self.logs[component].read_text(errors="replace")[-tail:]


@contextmanager
def node(cp: ControlPlane, workdir: Path, name: str = "node-0", timeout_s: float = 120) -> Iterator[Node]:
    """Start containerd and a kubelet; yields once the Node is Ready; stops both, removes every
    container, mount and directory they made on exit."""
    for tool in ("containerd", "ctr", "runc"):
        if not shutil.which(tool):
            raise FileNotFoundError(f"{tool} is missing: `make k8s` installs Debian's containerd and runc")
    if not (BIN / "kubelet").exists():
        raise FileNotFoundError(f"{BIN} lacks the kubelet: `make k8s` (tests/k8s/install.sh) builds it")
    # The kubelet's and containerd's state: a short path (unix socket names are limited to 108 bytes).
    state = Path(f"/tmp/quiver-node-{os.getpid()}")
    (state / "cni").mkdir(parents=True)
    (state / "cni-bin").mkdir()
    shutil.copy("/usr/lib/cni/loopback", state / "cni-bin" / "loopback")
    fake = state / "cni-bin" / "quiver-lo-address"
    fake.write_text(_CNI_PLUGIN)
    fake.chmod(0o755)
    (state / "cni" / "10-lo.conflist").write_text(
        '{"cniVersion": "0.4.0", "name": "lo-only", "plugins": [{"type": "loopback"}, {"type": "quiver-lo-address"}]}'
    )
    socket = state / "containerd.sock"
    (state / "containerd.toml").write_text(f"""version = 2
root = "{state}/containerd-root"
state = "{state}/containerd-state"
[grpc]
  address = "{socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE}"
  # root here lacks CAP_SYS_RESOURCE: runc cannot set a sandbox's oom_score_adj of -998; clamp it.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{state}/cni-bin"
    conf_dir = "{state}/cni"
""")
    logs = {"containerd": workdir / "containerd.log", "kubelet": workdir / "kubelet.log"}
    result = Node(name, socket, logs)
    processes: list[subprocess.Popen] = []
    try:
        processes.append(_start(["containerd", "--config", str(state / "containerd.toml")], logs["containerd"]))
        wait_for(socket.exists, "containerd's socket", 30)
        save({"/pause": BIN / "pause"}, PAUSE, workdir / "pause.tar", {}, entrypoint=["/pause"])
        result.load_image(workdir / "pause.tar")
        kubeconfig = cp.identity(f"system:node:{name}", organization="system:nodes")  # what the Node authorizer expects
        processes.append(_start([
            str(BIN / "kubelet"), "--kubeconfig", str(kubeconfig), "--hostname-override", name,
            "--container-runtime", "remote", "--container-runtime-endpoint", f"unix://{socket}",
            "--root-dir", str(state / "kubelet"), "--cert-dir", str(state / "kubelet" / "pki"),
            "--node-ip", "127.0.0.1", "--address", "127.0.0.1", "--port", str(free_port()), "--read-only-port", "0",
            "--healthz-bind-address", "127.0.0.1", "--healthz-port", str(free_port()),
            "--fail-swap-on=false", "--cgroup-driver", "cgroupfs", "--cgroup-root", "/",
            "--make-iptables-util-chains=false",
            "--image-gc-high-threshold", "100", "--image-gc-low-threshold", "99",
            "--eviction-hard", "memory.available<100Mi", "--v", "1",
        ], logs["kubelet"], {**os.environ, "KUBELET_ALLOW_LOOPBACK_NODE_IP": "1"}))
        core = client.CoreV1Api(cp.api())

        def ready() -> bool:
            if processes[-1].poll() is not None:
                raise RuntimeError(f"the kubelet exited:\n{result.log('kubelet')}")
            conditions = core.read_node(name).status.conditions or []
            return any(c.type == "Ready" and c.status == "True" for c in conditions)

        try:
            wait_for(ready, f"node {name} Ready", timeout_s)
        except TimeoutError as exc:
            raise RuntimeError(f"{exc}\nkubelet log:\n{result.log('kubelet')}\ncontainerd log:\n{result.log('containerd')}") from None
        yield result
    finally:
        _stop_all(processes, socket, state)


def _start(command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)


def _stop_all(processes: list[subprocess.Popen], socket: Path, state: Path) -> None:
    """The kubelet, then every container (their shims outlive containerd), containerd, the
    shims left, the mounts under `state`, and the directories the two made."""
    for process in processes[1:]:
        stop_process(process)
    if processes and socket.exists():
        ctr = ["ctr", "--address", str(socket), "-n", "k8s.io"]
        tasks = subprocess.run([*ctr, "tasks", "ls", "-q"], capture_output=True, text=True).stdout.split()
        for task in tasks:
            subprocess.run([*ctr, "tasks", "kill", "-s", "SIGKILL", task], capture_output=True)
        for task in tasks:
            subprocess.run([*ctr, "tasks", "delete", "-f", task], capture_output=True)
        for container in subprocess.run([*ctr, "containers", "ls", "-q"], capture_output=True, text=True).stdout.split():
            subprocess.run([*ctr, "containers", "delete", container], capture_output=True)
    for process in processes[:1]:
        stop_process(process)
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):  # containerd-shim-runc-v2 of this containerd
        try:
            if str(socket).encode() in cmdline.read_bytes():
                os.kill(int(cmdline.parent.name), signal.SIGKILL)
        except OSError:
            pass
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(str(state)) or m.startswith("/var/lib/kubelet")), reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True)
    for path in (state, *_OUTSIDE):
        shutil.rmtree(path, ignore_errors=True)
    for cgroup in Path("/sys/fs/cgroup").glob("*/kubepods"):  # the kubelet's cgroups, deepest first
        subprocess.run(["find", str(cgroup), "-depth", "-type", "d", "-exec", "rmdir", "{}", ";"], capture_output=True)
