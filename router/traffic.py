"""Traffic weights across model versions (canary rollouts), from a file the router watches.

The file (JSON) says, per model, what share of requests without a `model_version` each
version gets; models it does not name go to their newest version:

    {"models": {"digits": {"1": 90, "2": 10}}}

Weights are relative (they need not sum to 100); a version at 0 gets no unpinned traffic but
still answers requests that name it. The router re-reads the file when it changes and swaps the
table in one assignment, so requests in flight are untouched; a file that does not parse or
names a version that is not deployed is refused with a logged error and the old table stays.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


logger = logging.getLogger(__name__)

Weight = Annotated[int, Field(ge=0, le=1_000_000)]


class TrafficSplit(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    models: dict[str, dict[str, Weight]] = {}

    @model_validator(mode="after")
    def _some_traffic(self) -> TrafficSplit:
        for model, weights in self.models.items():
            if not weights or sum(weights.values()) == 0:
                raise ValueError(f"models.{model}: at least one version needs a weight above 0")
        return self

    def check_against(self, deployed: Mapping[str, list[str]]) -> None:
        """Refuse versions that are not deployed (`deployed`: model → versions)."""
        for model, weights in self.models.items():
            missing = sorted(set(weights) - set(deployed.get(model, [])))
            if missing:
                raise ValueError(f"models.{model}: versions {missing} are not deployed (deployed: {deployed.get(model, [])})")


class Traffic:
    """The current split, and a watcher that replaces it when its file changes."""

    def __init__(self, deployed: Mapping[str, list[str]], path: Path | None = None, rng: random.Random | None = None) -> None:
        self._deployed = deployed
        self._path = path
        self._rng = rng or random.Random()
        self._split = TrafficSplit()
        self._stamp: tuple[int, int] | None = None

    @property
    def split(self) -> TrafficSplit:
        return self._split

    def pick(self, model: str) -> str:
        """A version for a request that names none ("" when the model has no weights: the newest)."""
        weights = self._split.models.get(model)
        if not weights:
            return ""
        versions, shares = zip(*weights.items())
        return self._rng.choices(versions, weights=shares)[0]

    def reload(self) -> bool:
        """Read the file if it changed; returns whether a new split took effect."""
        if self._path is None:
            return False
        try:
            stat = self._path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp == self._stamp:
                return False
            self._stamp = stamp
            split = TrafficSplit.model_validate_json(self._path.read_bytes())
            split.check_against(self._deployed)
        except (OSError, ValidationError, ValueError) as exc:
            logger.error("traffic file %s refused, keeping the current split: %s", self._path, exc)
            return False
        self._split = split  # one assignment: a request sees the old split or the new one, whole
        logger.warning("traffic split now %s", split.models)
        return True

    async def watch(self, interval_s: float = 0.25) -> None:
        """Re-read the file whenever it changes (a named task the router cancels on stop)."""
        while True:
            await asyncio.sleep(interval_s)
            self.reload()
