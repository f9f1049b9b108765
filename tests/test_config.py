"""Specification of shared/config.py: one validated RunConfig, errors that name the key."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from shared.config import (
    ConfigError,
    RunConfig,
    default_mapping,
    from_mapping,
    key_of,
    load_toml_overrides,
    parse_assignment,
)
from shared.privacy import federation_noise_multiplier
from shared.workload import store_of_users
from tests.conftest import tiny_config


def config_error(**values: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        from_mapping(values)
    return str(caught.value)


def test_pyproject_defaults_build_a_valid_config() -> None:
    config = from_mapping({})
    assert config.num_rounds == default_mapping()["num-rounds"]
    assert config.hidden_layers == tuple(int(x) for x in default_mapping()["mlp-layers"].split(","))


def test_every_pyproject_key_is_a_field_and_every_field_a_pyproject_key() -> None:
    fields = {key_of(f.name) for f in dataclasses.fields(RunConfig)}
    assert set(default_mapping()) == fields


def test_to_flower_round_trips_through_from_mapping() -> None:
    config = from_mapping({"num-rounds": 3, "privacy": "none"})
    assert from_mapping(config.to_flower()) == config


def test_unknown_key_is_rejected_naming_the_key() -> None:
    assert "'num-round'" in config_error(**{"num-round": 3})


def test_wrong_type_is_rejected_naming_the_key() -> None:
    message = config_error(**{"num-rounds": "x"})
    assert message.startswith("num-rounds:") and "expected int" in message


def test_bool_is_not_accepted_as_an_int() -> None:
    assert config_error(**{"num-rounds": True}).startswith("num-rounds:")


def test_integral_float_is_accepted_as_an_int_and_int_as_float() -> None:
    config = from_mapping({"num-rounds": 4.0, "learning-rate": 1})
    assert config.num_rounds == 4 and isinstance(config.num_rounds, int)
    assert config.learning_rate == 1.0 and isinstance(config.learning_rate, float)


@pytest.mark.parametrize(("key", "value"), [
    ("num-rounds", 0),
    ("delta", 1.5),
    ("delta", 0.0),
    ("clipping-norm", 0.0),
    ("noise-multiplier", -1.0),
    ("target-epsilon", 0.0),
    ("user-sample-rate", 1.5),
    ("server-momentum", 1.0),
    ("cold-start-text-components", -1),
])
def test_out_of_range_value_is_rejected_naming_the_key(key: str, value: float) -> None:
    assert config_error(**{key: value}).startswith(f"{key}:")


def test_choice_outside_the_allowed_ones_is_rejected_listing_them() -> None:
    message = config_error(privacy="central")
    assert message.startswith("privacy:") and "user, interaction, none" in message


def test_bad_mlp_layers_are_rejected_naming_the_key() -> None:
    assert config_error(**{"mlp-layers": "64,x"}).startswith("mlp-layers:")
    assert config_error(**{"mlp-layers": "64,0"}).startswith("mlp-layers:")


def test_reconstruction_threshold_above_num_shares_is_rejected() -> None:
    message = config_error(**{"secagg-num-shares": 5, "secagg-reconstruction-threshold": 6,
                              "noise-share-stores": 5})
    assert message.startswith("secagg-reconstruction-threshold:")


def test_noise_share_stores_above_threshold_is_rejected_under_user_dp_with_secagg() -> None:
    message = config_error(privacy="user", secagg=True, **{"secagg-reconstruction-threshold": 8,
                                                            "noise-share-stores": 9})
    assert message.startswith("noise-share-stores:")


def test_noise_share_stores_above_threshold_is_allowed_without_secagg() -> None:
    config = from_mapping({"privacy": "user", "secagg": False, "noise-share-stores": 9,
                           "secagg-reconstruction-threshold": 8})
    assert config.noise_share_stores == 9


@pytest.mark.parametrize(("mode", "tower"), [("none", "text"), ("interaction", "text"), ("user", "id"),
                                           ("user", "hybrid")])
def test_only_user_level_dp_with_the_text_tower_learns_the_item_bias_alone(mode: str, tower: str) -> None:
    config = from_mapping({"federated-parameters": "item-bias", "privacy": mode, "item-tower": tower})
    assert config.learned_shared == "all"


def test_the_default_learns_only_the_item_bias() -> None:
    assert from_mapping({}).learned_shared == "item-bias"


def test_replace_validates_the_new_value() -> None:
    with pytest.raises(ConfigError, match=r"^num-rounds:"):
        from_mapping({}).replace(num_rounds=0)


@pytest.mark.parametrize(("text", "expected"), [
    ("num-rounds=3", ("num-rounds", 3)),
    ("delta=1e-5", ("delta", 1e-5)),
    ("secagg=false", ("secagg", False)),
    ('privacy="none"', ("privacy", "none")),
    ("privacy=none", ("privacy", "none")),        # not TOML: taken as a plain string
    ("mlp-layers=64,32", ("mlp-layers", "64,32")),
    (" seed =5", ("seed", 5)),
])
def test_set_assignment_is_parsed_as_a_toml_value_or_a_plain_string(text: str, expected: tuple) -> None:
    assert parse_assignment(text) == expected


def test_set_without_equals_is_rejected() -> None:
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_assignment("num-rounds")


def test_cli_rejects_an_unknown_key_with_exit_code_2_naming_it() -> None:
    fedrec = Path(sys.executable).with_name("fedrec")
    command = [str(fedrec)] if fedrec.exists() else [sys.executable, "-m", "simulations.cli"]
    done = subprocess.run([*command, "simulate", "--set", "bogus=1"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2
    assert "'bogus'" in done.stderr


def test_more_stores_than_users_is_rejected_naming_num_stores(tiny_data: Path) -> None:
    config = tiny_config(tiny_data, partition="iid", num_stores=31)  # the tiny data has 30 users
    with pytest.raises(ConfigError, match=r"^num-stores: 31 stores but only 30 users"):
        store_of_users(config)


def test_configuration_doc_lists_every_key_with_its_default() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text(encoding="utf-8")
    rows = {}
    for line in doc.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`") and cells[1].startswith("`"):
            rows[cells[0].strip("`")] = tomllib.loads(f"v = {cells[1].strip('`')}")["v"]
    assert rows == default_mapping()


def test_num_stores_is_not_checked_when_users_csv_names_the_stores(tiny_data: Path) -> None:
    config = tiny_config(tiny_data, partition="stores-file", num_stores=31)  # num-stores is ignored here
    assert store_of_users(config).max() == 2


def test_reconstruction_threshold_equal_to_num_shares_is_rejected() -> None:
    message = config_error(**{"secagg-num-shares": 5, "secagg-reconstruction-threshold": 5,
                              "noise-share-stores": 5})
    assert message.startswith("secagg-reconstruction-threshold:")


def test_even_share_count_below_the_store_count_is_rejected_naming_the_key() -> None:
    from server.app import check_secagg_config

    config = from_mapping({"secagg-num-shares": 10, "secagg-reconstruction-threshold": 8})
    with pytest.raises(ConfigError, match=r"^secagg-num-shares"):
        check_secagg_config(config, 50)
    check_secagg_config(config, 10)  # a full graph is fine
    check_secagg_config(config.replace(secagg_num_shares=11), 50)


SCENARIOS = Path(__file__).parents[1] / "simulations/configs"


# audit scenarios have their own schema (tests/test_audit.py)
RUN_SCENARIOS = sorted(p.name for p in SCENARIOS.glob("*.toml") if "audit" not in p.name)


@pytest.mark.parametrize("scenario", RUN_SCENARIOS)
def test_every_shipped_scenario_file_builds_a_valid_config(scenario: str) -> None:
    path = SCENARIOS / scenario
    overrides = load_toml_overrides(path)
    assert overrides, f"{scenario} sets nothing"
    config = from_mapping(overrides)
    for key, value in overrides.items():
        assert getattr(config, key.replace("-", "_")) == value


def test_the_recommended_federation_scenario_is_private_and_spends_its_budget_over_its_rounds() -> None:
    config = from_mapping(load_toml_overrides(SCENARIOS / "federation.toml"))
    assert (config.privacy, config.secagg, config.target_epsilon) == ("user", True, 8.0)
    assert config.num_rounds == 40 and config.sigma_from_target
    assert federation_noise_multiplier(config) > federation_noise_multiplier(config.replace(num_rounds=10))
