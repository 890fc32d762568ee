"""What a replica loads is what the manifest published: digest checked, decrypted in memory.

The sha256 is taken of the bytes that are then used, not of the file, so nothing can change
between the check and the load; an encrypted variant is decrypted in memory and never touches
the disk in the clear. Every refusal names the model, version and variant.
"""

from __future__ import annotations

import hashlib

from . import crypto
from .manifest import Variant
from .store import ModelVersion


class IntegrityError(Exception):
    """A variant file is not the one its manifest published; nothing was loaded."""


def variant_bytes(version: ModelVersion, variant: Variant, key: bytes | None = None) -> bytes:
    what = f"{version.key} variant {variant.name!r}"
    path = version.path(variant)
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise IntegrityError(f"{what}: cannot read {path}: {exc.strerror}") from exc
    actual = hashlib.sha256(content).hexdigest()
    if actual != variant.sha256:
        raise IntegrityError(f"{what}: {path} has sha256 {actual}, the manifest expects {variant.sha256}")
    if variant.encryption is None:
        return content
    if key is None:
        raise IntegrityError(f"{what} is encrypted ({variant.encryption}) and no model key was given")
    try:
        return crypto.decrypt(content, key, crypto.associated_data(version.manifest.name, version.manifest.version, variant.name))
    except crypto.DecryptionError as exc:
        raise IntegrityError(f"{what}: cannot decrypt: {exc}") from None
