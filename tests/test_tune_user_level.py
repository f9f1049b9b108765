"""Specification of simulations/tune_user_level.py: the in-process proxy used to choose user-level settings on
validation items."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from shared.config import RunConfig
from shared.privacy import federation_noise_multiplier
from simulations.tune_user_level import tune_run


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
