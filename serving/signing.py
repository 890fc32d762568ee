"""Model authenticity: OpenSSF model signing (`model-signing`) with elliptic-curve keys.

`quiver optimize --sign-key private.pem` signs a whole version directory (manifest, variant
files, report) into `model.sig` inside it. Serving with `--verify-key public.pem` checks the
signature before anything loads: a changed, added or removed file, or a signature by a key not
configured, refuses the version. The manifest is signed and holds each variant's sha256, which
replicas check on the bytes they load, so the chain reaches every file a replica runs.
"""

from __future__ import annotations

from pathlib import Path

from .integrity import IntegrityError

SIGNATURE_FILE = "model.sig"


def sign(directory: Path, private_key: Path) -> Path:
    from model_signing import signing

    signature = (directory / SIGNATURE_FILE).resolve()
    signing.Config().use_elliptic_key_signer(private_key=private_key).set_hashing_config(_hashing(signature)).sign(
        directory.resolve(), signature
    )
    return signature


def verify(directory: Path, public_keys: list[Path], what: str) -> None:
    """Raise IntegrityError unless one of `public_keys` verifies the directory's signature."""
    from model_signing import verifying

    signature = (directory / SIGNATURE_FILE).resolve()
    if not signature.is_file():
        raise IntegrityError(f"{what} is not signed ({SIGNATURE_FILE} missing) and verification is required")
    reasons = []
    for key in public_keys:
        try:
            verifying.Config().use_elliptic_key_verifier(public_key=key).set_hashing_config(_hashing(signature)).verify(
                directory.resolve(), signature
            )
            return
        except ValueError as exc:  # model-signing reports every mismatch as ValueError
            reasons.append(f"{key.name}: {str(exc).splitlines()[0][:200]}")
    raise IntegrityError(f"{what}: signature not verified ({'; '.join(reasons)})")


def _hashing(signature: Path):  # noqa: ANN202 - model_signing.hashing.Config
    from model_signing import hashing

    # The signature lives in the directory it signs: leave it out of what is hashed.
    return hashing.Config().set_ignored_paths(paths=[signature])
