"""Container images without a registry or a build daemon: a one-layer tarball in `docker save`
format that `ctr images import` loads into the node's containerd.

`traced_rootfs` picks the files a command and its children really open (strace on this machine),
so an image for `quiver optimize` and `quiver tune` holds the interpreter, the venv's packages
they import (Ray's binaries among them) and the checkout's modules they run, not the whole venv
(7 GB, most of it torch and CUDA wheels).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import struct
import subprocess
import tarfile
from pathlib import Path

# Successful calls that name a path: `openat(AT_FDCWD, "/x", ...) = 3`, `execve("/x", ...) = 0`.
_CALL = re.compile(r'^(?:openat|open|execve|stat|lstat|newfstatat|statx|readlink|access)\((?:AT_FDCWD, )?"([^"]+)".*= (\d+)')
_SKIP = ("/proc", "/sys", "/dev", "/tmp", "/run", "/etc/ld.so.cache")


def traced_rootfs(command: list[str], trace: Path, env: dict[str, str] | None = None) -> set[Path]:
    """Run `command` under strace, following every process and thread it starts (Ray's servers
    and workers too); the absolute paths of the files and symlinks they opened, read or executed
    (with every symlink on the way, so the same paths resolve in the image). `trace` is a folder:
    one file per thread (-ff), as one shared file splits a call that another thread interrupts
    into an `<unfinished ...>` and a `resumed` line, which would lose its path."""
    trace.mkdir()
    # --seccomp-bpf stops the tracees only at the calls traced, not at every call: Ray's busy
    # threads run near their own speed.
    done = subprocess.run(["strace", "-ff", "--seccomp-bpf", "-qq", "-o", str(trace / "call"), "-e",
                           "trace=execve,open,openat,stat,lstat,newfstatat,statx,readlink,access", *command],
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        raise RuntimeError(f"{command[:2]} exited {done.returncode} under strace:\n{done.stderr[-4000:]}")
    paths: set[Path] = set()
    for thread in trace.iterdir():
        for line in thread.read_text(errors="replace").splitlines():
            if (match := _CALL.match(line)) and match[1].startswith("/") and not match[1].startswith(_SKIP):
                _add(Path(match[1]), paths)
                if line.startswith("execve("):
                    _add_interpreters(Path(match[1]), paths)
    return paths


def _add_interpreters(executable: Path, paths: set[Path]) -> None:
    """What the kernel opens for an exec, unseen by strace: a script's `#!` interpreter and an
    ELF program's dynamic loader (its PT_INTERP)."""
    head = executable.read_bytes()[:4096] if executable.is_file() else b""
    interpreter = None
    if head.startswith(b"#!"):
        interpreter = head[2:].split(b"\n", 1)[0].split()[0].decode()
    elif head.startswith(b"\x7fELF\x02\x01"):  # 64-bit little-endian
        data = executable.read_bytes()
        offset, size, count = struct.unpack_from("<Q", data, 0x20)[0], *struct.unpack_from("<HH", data, 0x36)
        for i in range(count):
            kind, _, start, _, _, length = struct.unpack_from("<IIQQQQ", data, offset + i * size)
            if kind == 3:  # PT_INTERP
                interpreter = data[start:start + length].rstrip(b"\0").decode()
    if interpreter:
        _add(Path(interpreter), paths)
        _add_interpreters(Path(interpreter).resolve(), paths)


def _add(path: Path, paths: set[Path]) -> None:
    """`path` and, for each symlink among it and its parents, the link and what it points to."""
    current = Path("/")
    for part in path.parts[1:]:
        current = current.parent if part == ".." else current / part  # `current` has no symlinks left
        if current.is_symlink():
            paths.add(current)
            _add(current.parent / os.readlink(current), paths)
            current = current.resolve()
    if current.is_file():
        paths.add(current)


def save(files: dict[str, Path], ref: str, out: Path, env: dict[str, str], entrypoint: list[str] | None = None) -> int:
    """Write the image `ref` holding each file (or symlink) at its path in the image (the key,
    absolute); returns the layer's size. Directories are 0755 and owned by root, so any uid the
    pod runs as can reach the files."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({parent for name in files for parent in Path(name).parents if parent != Path("/")})
        for directory in dirs:
            info = tarfile.TarInfo(str(directory).lstrip("/"))
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, path in sorted(files.items()):
            info = tar.gettarinfo(str(path), name.lstrip("/"))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mode |= 0o444 | (0o111 if info.mode & 0o100 else 0)
            if info.isfile():
                with path.open("rb") as data:
                    tar.addfile(info, data)
            else:
                tar.addfile(info)
    layer_bytes = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    settings: dict = {"Env": [f"{key}={value}" for key, value in env.items()]}
    if entrypoint:
        settings["Entrypoint"] = entrypoint
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": settings,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    layer_name = diff_id.removeprefix("sha256:") + "/layer.tar"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [ref], "Layers": [layer_name]}]).encode()
    with tarfile.open(out, "w") as tar:
        for name, data in ((config_name, config), (layer_name, layer_bytes), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return len(layer_bytes)
