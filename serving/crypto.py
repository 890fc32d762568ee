"""Variant files encrypted at rest: AES-256-GCM (`cryptography`), decrypted in memory only.

Each file is a fresh 12-byte nonce followed by the ciphertext and its tag. The model's name,
version and variant are bound as associated data, so a file moved to another model, version
or variant fails to decrypt just as a flipped bit or a wrong key does. Keys are 32 bytes, kept
in a file (a mounted Kubernetes Secret) as raw bytes, hex or base64.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ALGORITHM = "aes-256-gcm"
NONCE_BYTES = 12
KEY_BYTES = 32


def read_key(path: Path) -> bytes:
    content = path.read_bytes()
    if len(content) == KEY_BYTES:
        return content
    text = content.strip()
    for decode in (binascii.unhexlify, base64.b64decode):
        try:
            key = decode(text)
        except (binascii.Error, ValueError):
            continue
        if len(key) == KEY_BYTES:
            return key
    raise ValueError(f"{path}: a key is {KEY_BYTES} bytes (raw, hex or base64)")


def associated_data(model: str, version: str, variant: str) -> bytes:
    return f"quiver:{model}:{version}:{variant}".encode()


def encrypt(plaintext: bytes, key: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)  # never reused: a fresh one for every file written
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


class DecryptionError(Exception):
    """Wrong key, a changed byte, or associated data of another file: GCM's tag does not match."""


def decrypt(blob: bytes, key: bytes, aad: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except InvalidTag:
        raise DecryptionError("wrong key, a flipped bit, or a file of another model, version or variant") from None
