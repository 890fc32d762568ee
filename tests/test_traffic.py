"""Version weights: the file's format, statistical honesty of the split, refusals that keep the old split."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from pydantic import ValidationError

from quiver.router.traffic import Traffic, TrafficSplit

DEPLOYED = {"digits": ["1", "2"], "other": ["1"]}


def write(path: Path, document: object) -> Path:
    path.write_text(json.dumps(document))
    return path


def test_weights_are_honoured_within_statistical_bounds(tmp_path: Path) -> None:
    traffic = Traffic(DEPLOYED, write(tmp_path / "t.json", {"models": {"digits": {"1": 90, "2": 10}}}), random.Random(7))
    assert traffic.reload()
    picks = [traffic.pick("digits") for _ in range(10_000)]
    share = picks.count("2") / len(picks)
    # Binomial(10 000, 0.1): σ = 0.003, so 0.1 ± 5σ holds unless the split is wrong.
    assert abs(share - 0.1) < 0.015
    assert traffic.pick("other") == ""  # no weights: the router takes the newest version
    # What `quiver serve` exports as quiver_route_weight: the split, and all to the newest where it says nothing.
    assert traffic.weights({"digits": ["1", "2"], "other": ["1", "3"]}) == {"digits": {"1": 90, "2": 10}, "other": {"1": 0, "3": 100}}


def test_a_changed_file_takes_effect_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "t.json", {"models": {"digits": {"1": 100}}})
    traffic = Traffic(DEPLOYED, path)
    assert traffic.reload() and traffic.pick("digits") == "1"
    assert not traffic.reload()  # unchanged
    for bad in (
        "{not json",
        {"models": {"digits": {"3": 100}}},  # version not deployed
        {"models": {"digits": {"1": 0, "2": 0}}},  # no traffic at all
        {"models": {"digits": {"1": -5}}},
        {"model": {}},  # unknown key
    ):
        path.write_text(bad if isinstance(bad, str) else json.dumps(bad))
        assert not traffic.reload()
        assert traffic.split.models == {"digits": {"1": 100}}
    write(path, {"models": {"digits": {"1": 0, "2": 1}}})
    assert traffic.reload() and {traffic.pick("digits") for _ in range(100)} == {"2"}


def test_the_split_validates_its_fields() -> None:
    with pytest.raises(ValidationError, match="models.digits: at least one version needs a weight above 0"):
        TrafficSplit.model_validate({"models": {"digits": {}}})
    with pytest.raises(ValueError, match=r"versions \['9'\] are not deployed"):
        TrafficSplit.model_validate({"models": {"digits": {"9": 1}}}).check_against(DEPLOYED)
