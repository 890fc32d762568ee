"""The model store on disk: `STORE/<model>/<version>/` holds variant files and `manifest.json`.

A plain `.onnx` file is a store of its own: one model, version "1", one fp32 variant, its
signature read from the graph.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import helper
from pydantic import ValidationError

from .datatypes import Datatype
from .manifest import Manifest, TensorSpec, Variant

MANIFEST_FILE = "manifest.json"


class StoreError(Exception):
    """The store on disk is unusable: a missing file or an invalid manifest."""


@dataclass(frozen=True)
class ModelVersion:
    """A manifest and the directory its variant files live in."""

    manifest: Manifest
    directory: Path

    @property
    def key(self) -> str:
        return f"{self.manifest.name}:{self.manifest.version}"

    def path(self, variant: Variant) -> Path:
        return self.directory / variant.file


def load_store(root: Path) -> list[ModelVersion]:
    """Every model version under `root`, read from `root/<model>/<version>/manifest.json`."""
    if not root.is_dir():
        raise StoreError(f"model store {root} is not a directory")
    versions = [read_version(path.parent) for path in sorted(root.glob(f"*/*/{MANIFEST_FILE}"))]
    if not versions:
        raise StoreError(f"model store {root} holds no */*/{MANIFEST_FILE}")
    for version in versions:
        model_dir, version_dir = version.directory.parent.name, version.directory.name
        if (version.manifest.name, version.manifest.version) != (model_dir, version_dir):
            raise StoreError(
                f"{version.directory / MANIFEST_FILE}: manifest says "
                f"{version.key}, its directory says {model_dir}:{version_dir}"
            )
    return versions


def read_version(directory: Path) -> ModelVersion:
    path = directory / MANIFEST_FILE
    try:
        manifest = Manifest.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror}") from exc
    except ValidationError as exc:
        raise StoreError(f"{path} is not a valid manifest:\n{exc}") from exc
    return ModelVersion(manifest, directory)


def write_version(root: Path, manifest: Manifest) -> ModelVersion:
    """Write `manifest.json` into `root/<model>/<version>/` (the variant files already there)."""
    directory = root / manifest.name / manifest.version
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2, exclude_defaults=True) + "\n")
    return ModelVersion(manifest, directory)


def from_onnx_file(path: Path, name: str | None = None, version: str = "1") -> ModelVersion:
    """Serve a single `.onnx` file as a one-variant model named after its stem (or `name`)."""
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except (OSError, DecodeError) as exc:
        raise StoreError(f"cannot read ONNX model {path}: {exc}") from exc
    initializers = {init.name for init in graph.initializer}
    manifest = Manifest(
        name=name or path.stem,
        version=version,
        inputs=[_tensor_spec(value) for value in graph.input if value.name not in initializers],
        outputs=[_tensor_spec(value) for value in graph.output],
        variants=[Variant(name="fp32", file=path.name, sha256=sha256_file(path))],
    )
    return ModelVersion(manifest, path.parent)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tensor_spec(value: onnx.ValueInfoProto) -> TensorSpec:
    tensor = value.type.tensor_type
    try:
        datatype = Datatype.from_numpy(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
    except (KeyError, ValueError) as exc:
        raise StoreError(f"tensor {value.name!r}: unsupported element type {tensor.elem_type}") from exc
    shape = [dim.dim_value if dim.HasField("dim_value") else -1 for dim in tensor.shape.dim]
    return TensorSpec(name=value.name, datatype=datatype, shape=shape)
