"""Specification of simulations/tune_user_level.py: the in-process proxy used to choose user-level settings on
validation items."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import simulations.tune_user_level as proxy
from shared.config import ConfigError, RunConfig
from shared.privacy import federation_noise_multiplier
from simulations.tune_user_level import run_sweep, sweep_jobs, tune_run
from tests.conftest import TINY_MODEL, TINY_STORES


def test_the_proxy_spends_the_budget_and_reports_validation_per_round(
        make_config: Callable[..., RunConfig]) -> None:
    config = make_config(privacy="user", secagg=False, num_rounds=3, target_epsilon=4.0, user_sample_rate=1.0,
                         user_refresh_epochs=1)
    result = tune_run(config)
    assert federation_noise_multiplier(config) > 0
    assert result["epsilon"] == pytest.approx(4.0, abs=0.05)  # σ from the target: 3 rounds spend it
    assert len(result["valid_hr_per_round"]) == len(result["valid_hr_full_per_round"]) == 3
    assert result["valid_hr"] == result["valid_hr_per_round"][-1]
    assert 0.0 <= result["valid_hr_full"] <= result["valid_hr"] <= 1.0
    assert result["non_finite_scores"] == 0.0


def test_the_proxy_refuses_a_mode_it_does_not_model(make_config: Callable[..., RunConfig]) -> None:
    with pytest.raises(ValueError, match="privacy"):
        tune_run(make_config(privacy="interaction"))


def test_the_proxy_refuses_secagg_which_would_under_noise_it(make_config: Callable[..., RunConfig]) -> None:
    # With SecAgg+ on, one store adds σ²C²/K: the proxy would read as if the noise were sqrt(K) times smaller.
    with pytest.raises(ValueError, match="secagg"):
        tune_run(make_config(privacy="user", secagg=True, noise_share_stores=8))


def _tiny_settings(tiny_data: Path, **overrides: Any) -> dict[str, Any]:
    return {"dataset": str(tiny_data), "partition": "stores-file", "num-stores": len(TINY_STORES),
            "num-rounds": 2, "batch-size": 64, "torch-threads": 1, **TINY_MODEL, **overrides}


def test_a_sweep_runs_every_setting_and_seed_and_ranks_the_means(tiny_data: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps([
        {"name": "small steps", "seeds": [0, 1],
         "set": _tiny_settings(tiny_data, **{"server-learning-rate": 0.1})},
        {"name": "default steps", "seeds": [0], "set": _tiny_settings(tiny_data)},
    ]))
    summary = run_sweep(sweep, processes=2)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    runs = [line for line in lines if "summary" not in line]
    assert sorted((r["name"], r["seed"]) for r in runs) == [("default steps", 0), ("small steps", 0),
                                                          ("small steps", 1)]
    assert all(len(r["valid_hr_per_round"]) == 2 for r in runs)
    assert lines[-1] == {"summary": summary}
    by_name = {row["name"]: row for row in summary}
    assert by_name["small steps"]["seeds"] == [0, 1]
    mean = sum(r["valid_hr"] for r in runs if r["name"] == "small steps") / 2
    assert by_name["small steps"]["valid_hr"] == pytest.approx(mean, abs=1e-4)
    assert [row["valid_hr"] for row in summary] == sorted((row["valid_hr"] for row in summary), reverse=True)


def test_a_sweep_file_with_a_bad_entry_fails_before_anything_runs(tiny_data: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps([{"name": "ok", "seeds": [0], "set": _tiny_settings(tiny_data)},
                                 {"name": "bad", "seeds": [0], "set": {"clipping-norm": -1.0}}]))
    with pytest.raises(ConfigError, match="clipping-norm"):
        sweep_jobs(sweep)
    sweep.write_text(json.dumps([{"name": "no seeds", "set": {}}]))
    with pytest.raises(SystemExit, match="entry 0"):
        sweep_jobs(sweep)
    sweep.write_text("[{")
    with pytest.raises(SystemExit, match=r"sweep\.json"):
        sweep_jobs(sweep)


@pytest.mark.parametrize("sweep", sorted(p.name for p in (Path(__file__).parents[1] / "simulations/tuning")
                                         .glob("*.json")))
def test_every_shipped_sweep_file_is_valid(sweep: str) -> None:
    jobs = sweep_jobs(Path(__file__).parents[1] / "simulations/tuning" / sweep)
    assert jobs and all(isinstance(seed, int) for _, seed, _ in jobs)


def test_precomputed_catalog_features_stand_in_for_the_encoder(make_config: Callable[..., RunConfig],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # A many-core box without the packaged encoder passes the embeddings as a file: the run must be the one
    # the encoder's own embeddings give, and must not reach for the encoder at all.
    config = make_config(privacy="user", secagg=False, num_rounds=2, target_epsilon=4.0, user_sample_rate=1.0,
                         item_tower="text", federated_parameters="item-bias")
    n_items = proxy.load_workload(config).split.n_items
    features = np.random.default_rng(0).normal(size=(n_items, 12)).astype(np.float32)
    monkeypatch.setattr(proxy, "catalog_features", lambda _config: features)
    encoded = tune_run(config)

    def no_encoder(_config: RunConfig) -> None:
        raise AssertionError("the encoder was asked for although features were given")

    monkeypatch.setattr(proxy, "catalog_features", no_encoder)
    given = tune_run(config, features)
    assert {k: v for k, v in given.items() if k != "seconds"} == {k: v for k, v in encoded.items()
                                                                   if k != "seconds"}
    with pytest.raises(ValueError, match=f"catalog features: {n_items - 1} rows for {n_items} items"):
        tune_run(config, features[:-1])


def test_unreadable_catalog_features_are_refused_naming_the_file(tmp_path: Path) -> None:
    garbled = tmp_path / "features.npy"
    garbled.write_bytes(b"not an array")
    with pytest.raises(SystemExit, match=r"features\.npy: cannot read"):
        proxy.load_catalog_features(garbled)
    flat = tmp_path / "flat.npy"
    np.save(flat, np.zeros(5))
    with pytest.raises(SystemExit, match=r"flat\.npy: catalog features must be a 2-D array"):
        proxy.load_catalog_features(flat)
