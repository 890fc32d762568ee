"""The direction of imports is part of the design: `serving` never imports the router or the
command line, the router reaches ONNX Runtime only through serving's replicas, and the operator
reaches neither ONNX Runtime nor Ray's client.

(import-linter cannot follow the package-dir mapping of serving/ and router/ into `quiver.*`,
so the contracts are read here straight from each module's syntax tree.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FOLDERS = {"operator": "operator/controller"}  # see pyproject.toml's package-dir

FORBIDDEN = {
    "serving": ("quiver.router", "quiver.operator", "quiver.cli", "quiver.embedded"),
    "router": ("onnxruntime", "quiver.serving.runtime", "quiver.operator", "quiver.cli", "quiver.embedded"),
    # The operator reads manifests and talks to Kubernetes and Ray's REST API: no model runtime, no Ray client.
    "operator": ("onnxruntime", "ray", "quiver.router", "quiver.serving.runtime", "quiver.serving.deployment", "quiver.cli"),
}


def module_package(path: Path, package: str) -> list[str]:
    """The dotted package a module sits in: serving/optimize/fp16.py → quiver.serving.optimize."""
    folder = path.parent.relative_to(ROOT / FOLDERS.get(package, package))
    return ["quiver", package, *folder.parts]


def imported_modules(path: Path, package: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the module's own package
                own = module_package(path, package)
                parent = own[: len(own) + 1 - node.level]
                base = ".".join([*parent, base] if base else parent)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def forbidden(name: str, prefixes: tuple[str, ...]) -> bool:
    """`name` is one of the modules or inside one (`ray.serve` is Ray; `raycluster` is not)."""
    return any(name == prefix or name.startswith(f"{prefix}.") for prefix in prefixes)


def modules(package: str) -> list[Path]:
    """Every module of the package, subpackages included (serving/optimize/ too)."""
    # __main__.py is `python -m quiver.<package>`: it only hands over to the command line.
    return sorted(path for path in (ROOT / FOLDERS.get(package, package)).rglob("*.py") if path.name != "__main__.py")


def test_the_walk_reaches_subpackages_and_resolves_their_relative_imports() -> None:
    optimize = [path for path in modules("serving") if path.parent.name == "optimize"]
    assert ROOT / "serving/optimize/pipeline.py" in optimize
    # `from ..manifest import Metrics` in serving/optimize/ is serving's manifest, not optimize's.
    found = set().union(*(imported_modules(path, "serving") for path in optimize))
    assert "quiver.serving.manifest" in found and "quiver.serving.optimize.manifest" not in found


@pytest.mark.parametrize("package", FORBIDDEN)
def test_package_keeps_its_import_contract(package: str) -> None:
    found = modules(package)
    assert found
    broken = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in found
        for name in imported_modules(path, package)
        if forbidden(name, FORBIDDEN[package])
    }
    assert not broken


def test_no_folder_shadows_the_standard_library() -> None:
    """From the repository root, before anything imported it (-S: no site), `operator` is the stdlib's."""
    import subprocess
    import sys

    found = subprocess.run(
        [sys.executable, "-S", "-c", "import operator; print(operator.__file__)"], cwd=ROOT, capture_output=True, text=True
    )
    assert found.returncode == 0, found.stderr
    assert not found.stdout.strip().startswith(str(ROOT))
