"""Specification of client/user_dp.py: user-level DP-FedAvg inside a store.

Per-user clipping bounds what one shopper can do to the store's sum (the sensitivity the noise is sized to),
the noise shares of K stores add up to the configured variance, and one store round trains its sampled users,
records exactly one (σ, q, 1) ledger entry, refuses to run past the budget, and sends only shared parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

import client.user_dp as user_dp
from client.store import store_data
from client.trainers import BudgetExhausted
from client.user_dp import add_noise_share, clip_and_sum, user_level_round
from shared.config import RunConfig
from shared.ledger import LedgerEntry, PrivacyLedger
from shared.model import PRIVATE_PARAMETERS, NeuMF, shared_names, shared_shapes
from shared.privacy import noise_shares
from shared.split import Split
from shared.workload import model_shape

USERS = 6
STORE = 1
STORE_USERS = 10
CPU = torch.device("cpu")


def random_deltas(scale: float, seed: int = 0) -> dict[str, torch.Tensor]:
    """Per-user deltas of two shared tensors, [USERS, ...] each; float64, so tolerances measure clipping."""
    gen = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(USERS, 5, 3, generator=gen, dtype=torch.float64) * scale,
            "b": torch.randn(USERS, 7, generator=gen, dtype=torch.float64) * scale}


def only(deltas: dict[str, torch.Tensor], users: list[int]) -> dict[str, torch.Tensor]:
    return {n: d[users] for n, d in deltas.items()}


def norm(arrays: dict[str, torch.Tensor] | list[np.ndarray]) -> float:
    values = arrays.values() if isinstance(arrays, dict) else arrays
    return math.sqrt(sum(float((torch.as_tensor(v, dtype=torch.float64) ** 2).sum()) for v in values))


def minus(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: a[n] - b[n] for n in a}


# -- per-user clipping --------------------------------------------------------------------------------------

def test_each_users_clipped_contribution_has_norm_at_most_c() -> None:
    deltas, c = random_deltas(scale=1e6), 0.7
    assert min(norm(only(deltas, [u])) for u in range(USERS)) > 1e5 * c   # every user is far over the norm
    for user in range(USERS):
        contribution = clip_and_sum(only(deltas, [user]), c)
        assert norm(contribution) <= c + 1e-6
        assert norm(contribution) >= c - 1e-6  # clipped to the norm, not below it


def test_removing_one_user_changes_the_sum_by_at_most_c() -> None:
    deltas, c = random_deltas(scale=1e6), 0.7
    everyone = clip_and_sum(deltas, c)
    for user in range(USERS):
        others = clip_and_sum(only(deltas, [u for u in range(USERS) if u != user]), c)
        assert norm(minus(everyone, others)) <= c + 1e-6


def test_the_norm_is_taken_over_all_shared_tensors_jointly() -> None:
    deltas = {"w": torch.zeros(1, 2, dtype=torch.float64), "b": torch.zeros(1, 2, dtype=torch.float64)}
    deltas["w"][0] = torch.tensor([3.0, 0.0])
    deltas["b"][0] = torch.tensor([0.0, 4.0])   # joint norm 5; each tensor alone is under 5
    clipped = clip_and_sum(deltas, 1.0)
    torch.testing.assert_close(clipped["w"], torch.tensor([0.6, 0.0], dtype=torch.float64))
    torch.testing.assert_close(clipped["b"], torch.tensor([0.0, 0.8], dtype=torch.float64))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_user_delta_contributes_zero(bad: float) -> None:
    deltas, c = random_deltas(scale=1e6), 0.7
    deltas["b"][2, 4] = bad
    with_bad_user = clip_and_sum(deltas, c)
    without = clip_and_sum(only(deltas, [0, 1, 3, 4, 5]), c)
    assert all(torch.isfinite(t).all() for t in with_bad_user.values())
    for name in deltas:
        torch.testing.assert_close(with_bad_user[name], without[name], rtol=0, atol=1e-12)


def test_users_under_the_norm_are_summed_unchanged() -> None:
    deltas = random_deltas(scale=1e-3)
    c = 1.0
    assert max(norm(only(deltas, [u])) for u in range(USERS)) < c
    summed = clip_and_sum(deltas, c)
    for name, delta in deltas.items():
        torch.testing.assert_close(summed[name], delta.sum(0), rtol=1e-12, atol=0)


# -- distributed noise --------------------------------------------------------------------------------------

def test_k_stores_noise_shares_sum_to_the_configured_variance() -> None:
    sigma, c, k, coordinates = 1.3, 0.7, 4, 200_000
    total = torch.zeros(coordinates, dtype=torch.float64)
    for store in range(k):  # each store draws its share from its own generator
        share = {"update": torch.zeros(coordinates)}
        add_noise_share(share, sigma * c / math.sqrt(k), torch.Generator().manual_seed(100 + store))
        total += share["update"].double()
    variance, target = float(total.var()), (sigma * c) ** 2
    assert abs(variance / target - 1.0) < 0.02     # sampling s.e. of the variance: sqrt(2/n) = 0.32 %
    assert abs(float(total.mean())) < 5 * sigma * c / math.sqrt(coordinates)


def test_noise_is_added_in_place_to_every_tensor() -> None:
    total = {"a": torch.ones(3, 4), "b": torch.ones(5)}
    add_noise_share(total, 0.5, torch.Generator().manual_seed(0))
    assert all(bool((t != 1.0).all()) for t in total.values())
    assert [tuple(t.shape) for t in total.values()] == [(3, 4), (5,)]


def test_without_secagg_each_store_adds_the_full_noise(make_config: Callable[..., RunConfig]) -> None:
    assert noise_shares(make_config(privacy="user", secagg=False, noise_share_stores=5)) == 1


def test_with_secagg_the_noise_is_split_over_noise_share_stores(
        make_config: Callable[..., RunConfig]) -> None:
    config = make_config(privacy="user", secagg=True, secagg_num_shares=6, secagg_reconstruction_threshold=5,
                         noise_share_stores=4)
    assert noise_shares(config) == 4


# -- one store round ----------------------------------------------------------------------------------------

def user_config(make_config: Callable[..., RunConfig], **overrides: Any) -> RunConfig:
    values: dict[str, Any] = {"privacy": "user", "sigma_from_target": False, "noise_multiplier": 1.0,
                              "clipping_norm": 1.0, "user_local_steps": 2, "user_batch_size": 4,
                              "user_refresh_epochs": 0, "user_sample_rate": 0.5, "target_epsilon": 50.0}
    values.update(overrides)
    return make_config(**values)


def store_model(config: RunConfig) -> tuple[NeuMF, Split]:
    data = store_data(config, STORE)
    torch.manual_seed(0)
    model = NeuMF(data.split.n_users, model_shape(config, data.split.n_items, data.features))
    return model, data.split


def private_rows(model: NeuMF) -> dict[str, np.ndarray]:
    params = dict(model.named_parameters())
    return {name: params[name].detach().numpy().copy() for name in PRIVATE_PARAMETERS}


def all_parameters(model: NeuMF) -> dict[str, np.ndarray]:
    return {name: p.detach().numpy().copy() for name, p in model.named_parameters()}


def spy_sampled_users(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the users whose local runs ``user_level_round`` starts."""
    sampled: list[int] = []
    real = user_dp.local_user_runs

    def spy(model: Any, split: Any, pairs: Any, users: np.ndarray, *args: Any) -> Any:
        sampled.extend(int(u) for u in users)
        return real(model, split, pairs, users, *args)

    monkeypatch.setattr(user_dp, "local_user_runs", spy)
    return sampled


def test_round_returns_the_shared_shapes_weight_one_and_records_one_ledger_entry(
        make_config: Callable[..., RunConfig]) -> None:
    config = user_config(make_config, noise_multiplier=1.3, user_sample_rate=0.4)
    model, split = store_model(config)
    ledger = PrivacyLedger(delta=config.delta)

    update = user_level_round(model, split, config, ledger, 3, np.random.default_rng(0), CPU)

    assert [a.shape for a in update.arrays] == shared_shapes(model.shape)
    assert update.weight == 1
    assert ledger.entries == [LedgerEntry(round=3, noise_multiplier=1.3, sample_rate=0.4, steps=1)]


@pytest.mark.parametrize("learned", [{}, {"item_tower": "text", "federated_parameters": "item-bias"}],
                         ids=["every shared parameter", "the item bias only"])
def test_without_noise_the_sum_is_at_most_sampled_users_times_c(
        make_config: Callable[..., RunConfig], learned: dict[str, str]) -> None:
    c = 0.01  # far below an unclipped user's delta (user-learning-rate 10): every user is clipped
    config = user_config(make_config, noise_multiplier=0.0, target_epsilon=float("inf"), clipping_norm=c,
                         user_sample_rate=1.0, **learned)
    model, split = store_model(config)

    update = user_level_round(model, split, config, PrivacyLedger(config.delta), 1,
                              np.random.default_rng(0), CPU)

    assert 0.5 * c <= norm(update.arrays) <= STORE_USERS * c * (1 + 1e-6)


def test_the_noise_share_has_std_sigma_c_over_root_k(make_config: Callable[..., RunConfig]) -> None:
    """With no user sampled the update is the store's noise share alone: N(0, (σC)²/K) per coordinate."""
    for secagg in (False, True):
        config = user_config(make_config, noise_multiplier=1.5, clipping_norm=0.4, user_sample_rate=1e-9,
                             secagg=secagg, secagg_num_shares=4, secagg_reconstruction_threshold=3,
                             noise_share_stores=3)
        model, split = store_model(config)
        update = user_level_round(model, split, config, PrivacyLedger(config.delta), 1,
                                  np.random.default_rng(1), CPU)
        values = np.concatenate([a.ravel() for a in update.arrays]).astype(np.float64)
        expected = 1.5 * 0.4 / math.sqrt(noise_shares(config))
        assert len(values) > 1500
        assert abs(values.std() / expected - 1.0) < 0.1  # s.e. of the std here: sqrt(1/2n) ≈ 1.7 %


def test_a_round_past_the_budget_is_refused_and_records_nothing(
        make_config: Callable[..., RunConfig]) -> None:
    ledger = PrivacyLedger(delta=1e-5, entries=[LedgerEntry(1, 1.0, 0.5, 1)])
    spent, next_round = ledger.epsilon(), ledger.projected_epsilon(1.0, 0.5, 1)
    target = round((spent + next_round) / 2, 2)  # round 1 fit the budget, round 2 would not
    assert spent < target < next_round
    config = user_config(make_config, noise_multiplier=1.0, user_sample_rate=0.5, target_epsilon=target)
    model, split = store_model(config)
    before = all_parameters(model)

    with pytest.raises(BudgetExhausted, match=rf"round 2 would reach ε=.* > target-epsilon {target}"):
        user_level_round(model, split, config, ledger, 2, np.random.default_rng(0), CPU)

    assert ledger.entries == [LedgerEntry(1, 1.0, 0.5, 1)]
    for name, value in all_parameters(model).items():
        np.testing.assert_array_equal(value, before[name])  # nothing trained


def test_sampled_users_embeddings_change_the_others_do_not_and_none_is_sent(
        make_config: Callable[..., RunConfig], monkeypatch: pytest.MonkeyPatch) -> None:
    config = user_config(make_config, user_sample_rate=0.5, user_refresh_epochs=0)
    model, split = store_model(config)
    sampled = spy_sampled_users(monkeypatch)
    before = private_rows(model)

    update = user_level_round(model, split, config, PrivacyLedger(config.delta), 1,
                              np.random.default_rng(0), CPU)

    after = private_rows(model)
    assert 0 < len(sampled) < STORE_USERS and len(set(sampled)) == len(sampled)
    others = [u for u in range(STORE_USERS) if u not in sampled]
    for name in PRIVATE_PARAMETERS:
        assert (np.abs(after[name][sampled] - before[name][sampled]).max(axis=1) > 0).all()
        np.testing.assert_array_equal(after[name][others], before[name][others])
    private = list(after.values()) + list(before.values())
    for array in update.arrays:
        assert array.shape not in {p.shape for p in private}
        assert not any(array.size == p.size and np.allclose(array.ravel(), p.ravel()) for p in private)
    assert len(update.arrays) == len(shared_names(model))


def test_the_users_own_embedding_steps_at_its_own_learning_rate(
        make_config: Callable[..., RunConfig], monkeypatch: pytest.MonkeyPatch) -> None:
    """``user-embedding-learning-rate`` = 0 leaves the private rows to the refit; the item rows and dense
    layers still train at theirs (10 on the private rows diverged under ε ≤ 3's noise)."""
    config = user_config(make_config, user_sample_rate=1.0, user_refresh_epochs=0, noise_multiplier=0.0,
                         target_epsilon=float("inf"), user_embedding_learning_rate=0.0)
    model, split = store_model(config)
    before = private_rows(model)

    update = user_level_round(model, split, config, PrivacyLedger(config.delta), 1,
                              np.random.default_rng(0), CPU)

    for name, rows in private_rows(model).items():
        np.testing.assert_array_equal(rows, before[name])
    assert norm(update.arrays) > 0


def test_a_user_whose_local_run_diverged_keeps_their_previous_embedding(
        make_config: Callable[..., RunConfig], monkeypatch: pytest.MonkeyPatch) -> None:
    config = user_config(make_config, user_sample_rate=1.0, user_refresh_epochs=0)
    model, split = store_model(config)
    before = private_rows(model)
    real = user_dp.local_user_runs
    diverged = 3

    def one_user_diverges(model: Any, split: Any, pairs: Any, users: np.ndarray, *args: Any) -> Any:
        deltas, rows, loss = real(model, split, pairs, users, *args)
        rows["mlp_user.weight"][list(users).index(diverged)] = float("nan")
        return deltas, rows, loss

    monkeypatch.setattr(user_dp, "local_user_runs", one_user_diverges)
    user_level_round(model, split, config, PrivacyLedger(config.delta), 1, np.random.default_rng(0), CPU)

    after = private_rows(model)
    others = [u for u in range(STORE_USERS) if u != diverged]
    for name in PRIVATE_PARAMETERS:
        np.testing.assert_array_equal(after[name][diverged], before[name][diverged])
        assert np.isfinite(after[name]).all()
        assert (np.abs(after[name][others] - before[name][others]).max(axis=1) > 0).all()


def test_a_diverged_run_is_counted_and_the_round_reports_the_median_shoppers_loss(
        make_config: Callable[..., RunConfig], monkeypatch: pytest.MonkeyPatch) -> None:
    """A shopper's run blowing up (inf delta, loss 1e30) must not become the round's loss; it is counted."""
    config = user_config(make_config, user_sample_rate=1.0, user_refresh_epochs=0)
    model, split = store_model(config)
    real = user_dp.local_user_runs
    seen: list[torch.Tensor] = []

    def two_users_diverge(model: Any, split: Any, pairs: Any, users: np.ndarray, *args: Any) -> Any:
        deltas, rows, loss = real(model, split, pairs, users, *args)
        first = next(iter(deltas))
        deltas[first][0] = float("inf")  # a non-finite update: counts zero, and is counted
        loss[0], loss[1] = float("inf"), 1e30  # a finite blow-up is clipped like any update
        seen.append(loss.clone())
        return deltas, rows, loss

    monkeypatch.setattr(user_dp, "local_user_runs", two_users_diverge)
    ledger = PrivacyLedger(config.delta)
    update = user_level_round(model, split, config, ledger, 1, np.random.default_rng(0), CPU)

    losses = torch.cat(seen)
    assert update.diverged == len(seen)  # one per chunk of users
    assert update.loss == pytest.approx(float(losses[torch.isfinite(losses)].median()))
    assert update.loss < 10.0


def test_typical_loss_is_the_median_of_the_finite_losses() -> None:
    losses = [torch.tensor([0.5, float("inf"), 0.7]), torch.tensor([1e30, 0.6, 0.65])]
    assert user_dp.typical_loss(losses) == pytest.approx(0.65)
    assert math.isnan(user_dp.typical_loss([]))
    assert user_dp.typical_loss([torch.tensor([float("nan"), float("inf")])]) == float("inf")


# -- federated-parameters = "item-bias": only the per-item bias is learned and noised -----------------------

def bias_only_config(make_config: Callable[..., RunConfig], **overrides: Any) -> RunConfig:
    return user_config(make_config, item_tower="text", federated_parameters="item-bias", **overrides)


def test_bias_only_round_sends_exact_zeros_for_everything_but_the_noised_bias(
        make_config: Callable[..., RunConfig]) -> None:
    config = bias_only_config(make_config, noise_multiplier=2.0, user_sample_rate=1.0)
    model, split = store_model(config)
    before = all_parameters(model)

    update = user_level_round(model, split, config, PrivacyLedger(config.delta), 1,
                              np.random.default_rng(0), CPU)

    sent = dict(zip(shared_names(model), update.arrays, strict=True))
    assert set(sent) > {"item_bias.weight", "gmf_item_proj.weight", "mlp_item_proj.weight", "out.weight"}
    for name, array in sent.items():
        if name == "item_bias.weight":
            assert np.count_nonzero(array) == array.size and np.std(array) > 1.0  # σC = 2 of noise
        else:
            assert not np.any(array), name  # exact zeros: no training, no noise
    after = all_parameters(model)
    for name in shared_names(model):
        np.testing.assert_array_equal(after[name], before[name])  # the store's copy is untouched too
    assert any(not np.array_equal(after[n], before[n]) for n in PRIVATE_PARAMETERS)  # personalization trains


def test_the_refit_steps_at_its_own_learning_rate(make_config: Callable[..., RunConfig]) -> None:
    moved = []
    for rate in (1e-6, 0.1):
        config = user_config(make_config, user_sample_rate=1e-9, noise_multiplier=0.0,
                             target_epsilon=float("inf"), user_refresh_epochs=1,
                             user_refresh_learning_rate=rate)
        model, split = store_model(config)
        before = private_rows(model)
        user_level_round(model, split, config, PrivacyLedger(config.delta), 1, np.random.default_rng(0), CPU)
        moved.append(max(float(np.abs(private_rows(model)[n] - before[n]).max()) for n in PRIVATE_PARAMETERS))
    assert moved[0] < 1e-4 < 0.01 < moved[1]  # Adam moves each row by about its rate per step
