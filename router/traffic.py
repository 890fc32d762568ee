"""Traffic weights across model versions (canary rollouts), from a file the router watches.

The file (JSON) says, per model, what share of requests without a `model_version` each
version gets; models it does not name go to their newest version:

    {"models": {"digits": {"1": 90, "2": 10}}}

On a cluster the same file is the route table the operator writes (router/catalog.py): the
versions it names are the ones served, and `placement` says where the operator placed each
variant when that differs from its manifest:

    {"models": {"digits": {"2": 100}}, "placement": {"digits": {"2": {"fp32": {"pool": "cpu"}}}},
     "default_variant": {"digits": {"2": "int8-static"}}}

Weights are relative (they need not sum to 100); a version at 0 gets no unpinned traffic but
still answers requests that name it, unless it is in its rollout's Shadow step: `shadow` names
it, the serving version it mirrors and the share of that version's requests it is sent again
(router/shadow.py), and it answers no client at all. `capture` sets a model's capture rate and
bound over the router's own (router/shadow.py, serving/capture.py):

    {"models": {"digits": {"1": 100, "2": 0}}, "shadow": {"digits": {"2": {"of": "1", "sample_rate": 0.5}}},
     "capture": {"digits": {"rate": 0.05, "max_mb": 64}}}

The router re-reads the file when it changes and swaps the table in one assignment, so
requests in flight are untouched; a file that does not parse or names a version that is not
deployed is refused with a logged error and the old table stays.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from quiver.serving.manifest import Name, Placement

from .watched import WatchedFile

Weight = Annotated[int, Field(ge=0, le=1_000_000)]
Rate = Annotated[float, Field(ge=0, le=1)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Mirror(_Section):
    """A version in its Shadow step: a `sample_rate` share of version `of`'s answered requests is sent to it too."""

    of: str
    sample_rate: Rate


class ModelCapture(_Section):
    """One model's capture, over the router's --capture-rate and --capture-max-mb."""

    rate: Rate
    max_mb: Annotated[float, Field(gt=0)] | None = None


class TrafficSplit(_Section):
    models: dict[str, dict[str, Weight]] = {}
    placement: dict[str, dict[str, dict[str, Placement]]] = {}  # model → version → variant
    default_variant: dict[str, dict[str, Name]] = {}  # model → version → variant, over the manifest's
    shadow: dict[str, dict[str, Mirror]] = {}  # model → version in its Shadow step
    capture: dict[str, ModelCapture] = {}

    @model_validator(mode="after")
    def _some_traffic(self) -> TrafficSplit:
        for model, weights in self.models.items():
            if not weights or sum(weights.values()) == 0:
                raise ValueError(f"models.{model}: at least one version needs a weight above 0")
        for model, mirrors in self.shadow.items():
            weights = self.models.get(model, {})
            for version, mirror in mirrors.items():
                if weights.get(version) != 0:
                    raise ValueError(f"shadow.{model}.{version}: a version in its Shadow step needs weight 0 in models.{model}")
                if not weights.get(mirror.of):
                    raise ValueError(f"shadow.{model}.{version}.of: version {mirror.of!r} takes no traffic in models.{model}")
        return self

    def in_shadow(self, model: str, version: str) -> bool:
        """Whether the version is in its Shadow step: it answers no client request."""
        return version in self.shadow.get(model, {})

    def check_against(self, deployed: Mapping[str, list[str]]) -> None:
        """Refuse versions that are not deployed (`deployed`: model → versions)."""
        if self.placement or self.default_variant:
            raise ValueError("placement, default_variant: only a cluster's route table sets them (quiver serve reads manifests)")
        for model, weights in self.models.items():
            missing = sorted(set(weights) - set(deployed.get(model, [])))
            if missing:
                raise ValueError(f"models.{model}: versions {missing} are not deployed (deployed: {deployed.get(model, [])})")


class Traffic:
    """The current split, replaced when its file changes."""

    def __init__(self, deployed: Mapping[str, list[str]], path: Path | None = None, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

        def parse(content: bytes) -> TrafficSplit:
            split = TrafficSplit.model_validate_json(content)
            split.check_against(deployed)
            return split

        self.file = WatchedFile(path, parse, TrafficSplit(), "traffic split")

    @property
    def split(self) -> TrafficSplit:
        return self.file.value

    def pick(self, model: str) -> str:
        """A version for a request that names none ("" when the model has no weights: the newest)."""
        weights = self.split.models.get(model)
        if not weights:
            return ""
        versions, shares = zip(*weights.items())
        return self._rng.choices(versions, weights=shares)[0]

    def weights(self, served: Mapping[str, list[str]]) -> dict[str, dict[str, int]]:
        """Each served version's weight (`served`: model → versions, oldest first), as `pick` uses
        them: the split's, 0 for versions it does not name; all (100) to the newest for a model it does not name."""
        found = {}
        for model, versions in served.items():
            weights = self.split.models.get(model)
            found[model] = {v: weights.get(v, 0) if weights else 100 * (v == versions[-1]) for v in versions}
        return found

    def use(self, split: TrafficSplit) -> None:
        """Take a split checked elsewhere (a cluster's route table)."""
        self.file.value = split

    def reload(self) -> bool:
        return self.file.reload()
