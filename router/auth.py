"""Bearer-token authentication with per-model scopes, from a file the router watches.

The file (or a mounted Kubernetes Secret in the same format) holds one token per line with
the models it may use, `*` for every model; lines starting with `#` are comments:

    3f9c0a77b8e14d6f9d2c5e8a1b7c4f20 digits,minilm
    9a1e5b3c7d2f4e8a6b0c1d2e3f4a5b6c *
    5d0c2b9e8f7a6b5c4d3e2f1a0b9c8d7e * no-capture

`no-capture` after the models: this token's requests are never captured for recalibration
(`quiver serve --capture`); `check` leaves the answer in `CAPTURE` for the request's task.

Clients send `authorization: Bearer <token>` metadata (tritonclient: `headers=`). Tokens are
kept only as SHA-256 digests and every one is compared in constant time on each call, so the
answer's timing says nothing about which token came close. Tokens are never logged, and a
malformed file is reported by line number only.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc

from .errors import RouterError
from .watched import WatchedFile

EVERY_MODEL = "*"
MIN_TOKEN_LENGTH = 16
NO_CAPTURE = "no-capture"
# Whether the current request's inputs may be captured (router/shadow.py); without a token file, yes.
CAPTURE: contextvars.ContextVar[bool] = contextvars.ContextVar("quiver_capture", default=True)


class Unauthenticated(RouterError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(RouterError):
    code = grpc.StatusCode.PERMISSION_DENIED


@dataclass(frozen=True)
class Grant:
    digest: bytes
    models: frozenset[str]
    capture: bool = True

    def allows(self, model: str) -> bool:
        return EVERY_MODEL in self.models or model in self.models


def parse_tokens(content: bytes) -> tuple[Grant, ...]:
    grants = []
    for number, line in enumerate(content.decode("utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) not in (2, 3) or fields[2:] not in ([], [NO_CAPTURE]):
            raise ValueError(f"line {number}: expected a token and its models (comma-separated, or *), then optionally {NO_CAPTURE}")
        token, models = fields[:2]
        if len(token) < MIN_TOKEN_LENGTH:
            raise ValueError(f"line {number}: a token needs at least {MIN_TOKEN_LENGTH} characters")
        grants.append(Grant(_digest(token), frozenset(filter(None, models.split(","))), capture=len(fields) == 2))
    return tuple(grants)


class Authenticator:
    """Checks a call's token and its scope; with no token file, every call passes."""

    def __init__(self, path: Path | None) -> None:
        self.file: WatchedFile[tuple[Grant, ...]] = WatchedFile(path, parse_tokens, (), "token file")
        self.enabled = path is not None

    def check(self, metadata: Iterable[tuple[str, str | bytes]], model: str | None) -> None:
        """Raise unless the call carries a known token that may use `model` (any model: None)."""
        if not self.enabled:
            return
        header = next((value for key, value in metadata if key == "authorization"), None)
        if header is None:
            raise Unauthenticated("missing authorization metadata: send 'authorization: Bearer <token>'")
        scheme, _, token = (header.decode() if isinstance(header, bytes) else header).partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
        digest = _digest(token.strip())
        match = None
        for grant in self.file.value:  # no early exit: the same work whichever token matches
            if hmac.compare_digest(grant.digest, digest):
                match = grant
        if match is None:
            raise Unauthenticated("unknown token")
        if model is not None and not match.allows(model):
            raise PermissionDenied(f"this token may not use model {model!r}")
        CAPTURE.set(match.capture)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()
