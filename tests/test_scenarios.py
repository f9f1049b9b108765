"""Every shipped scenario file is a valid configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import from_mapping, load_toml_overrides

SCENARIOS = sorted((Path(__file__).resolve().parents[1] / "simulations" / "configs").glob("*.toml"))


def test_scenarios_are_shipped() -> None:
    assert {p.stem for p in SCENARIOS} >= {"nonprivate", "record-level", "quick"}


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_scenario_validates(path: Path) -> None:
    from_mapping(load_toml_overrides(path))
