"""A search's outcome into the store: each variant's `Profile`, and its chosen settings.

The manifest is rewritten through serving/store.py's `write_version`; a signed version
(serving/signing.py) is signed again with the key given, and refused without one, since
a changed manifest no longer verifies against the old signature.
"""

from __future__ import annotations

from pathlib import Path

from .. import signing
from ..manifest import BatchLatency, Profile
from ..store import ModelVersion, write_version
from .search import SearchResult


class TuneError(Exception):
    """Tuning cannot go on: a store without the model, a signed version without a key, a failed trial."""


def check_writable(version: ModelVersion, sign_key: Path | None) -> None:
    """Refuse before any measuring what could not be recorded afterwards."""
    if (version.directory / signing.SIGNATURE_FILE).is_file() and sign_key is None:
        raise TuneError(
            f"{version.key} is signed ({signing.SIGNATURE_FILE}): give --sign-key to sign it again "
            "after tuning, or its signature would no longer verify"
        )


def profile(result: SearchResult, pool: str, latency: list[BatchLatency]) -> Profile | None:
    """The chosen trial as a profile; where none meets the SLO, the lowest p99, marked so. None: no trial."""
    trial = result.chosen or result.fastest
    if trial is None:
        return None
    replicas = trial.settings.replicas
    return Profile(
        pool=pool,
        settings=trial.settings,
        objective=result.objective,
        slo_p99_ms=result.slo_p99_ms,
        meets_slo=result.chosen is not None,
        concurrency=trial.clients,
        p50_ms=trial.p50_ms,
        p99_ms=trial.p99_ms,
        throughput=trial.throughput,
        throughput_per_replica=trial.throughput / replicas,
        latency=latency,
    )


def record(store: Path, version: ModelVersion, profiles: dict[str, Profile], sign_key: Path | None = None) -> ModelVersion:
    """Write each variant's profile into its manifest; a profile that meets its SLO also sets
    the variant's threads, batching and replicas, which replicas then run with. Report files
    already in the version directory are signed with it."""
    variants = []
    for variant in version.manifest.variants:
        found = profiles.get(variant.name)
        if found is not None:
            variant = found.settings.apply(variant) if found.meets_slo else variant
            variant = variant.model_copy(update={"profile": found})
        variants.append(variant)
    manifest = version.manifest.model_validate({**version.manifest.model_dump(), "variants": [v.model_dump() for v in variants]})
    written = write_version(store, manifest)
    if sign_key is not None:
        signing.sign(written.directory, sign_key)
    return written
