"""Specification of client/record_dp.py: record-level DP-SGD inside a store (Opacus, ghost clipping).

The unit is one row (an interaction with its negatives): each row's gradient is clipped to C before the step,
so one row moves the parameters by at most lr·C however large its loss; the ledger records exactly the
(σ, q, steps) Opacus' own accountant counted.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch import nn

import client.record_dp as record_dp
from client.record_dp import (
    PrivateTraining,
    RowBCE,
    RowModel,
    dp_step,
    epoch_loader,
    make_private_training,
    opacus_steps_per_epoch,
    record_level_round,
    record_rows,
    steps_per_epoch,
)
from client.store import store_data
from client.trainers import BudgetExhausted
from shared.config import RunConfig
from shared.ledger import LedgerEntry, PrivacyLedger
from shared.model import PRIVATE_PARAMETERS, ModelShape, NeuMF, shared_shapes
from shared.workload import model_shape

NEGATIVES = 2
LABELS = torch.tensor([1.0] + [0.0] * NEGATIVES)
CPU = torch.device("cpu")


class WeightedRowBCE(RowBCE):
    """RowBCE with each row's loss multiplied by a fixed weight (to make one row's gradient huge)."""

    def __init__(self, weights: torch.Tensor, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.weights = weights

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        per_row = RowBCE("none")(logits, labels) * self.weights[: len(logits)]
        if self.reduction == "none":
            return per_row
        return per_row.mean() if self.reduction == "mean" else per_row.sum()


N_ITEMS = 20
# A text tower's catalog smaller than one batch's items (6 rows x 3): the case where NeuMF would project the
# whole catalog once and Opacus would then take the catalog's rows for the batch.
TEXT_N_ITEMS, TEXT_FEATURE_DIM = 8, 6


def small_row_model(item_tower: str = "id") -> RowModel:
    torch.manual_seed(3)
    if item_tower == "id":
        return RowModel(NeuMF(4, ModelShape(n_items=N_ITEMS, gmf_dim=4, mlp_dim=8, hidden=(16, 8))))
    shape = ModelShape(n_items=TEXT_N_ITEMS, gmf_dim=4, mlp_dim=8, hidden=(16, 8), item_tower=item_tower,
                       feature_dim=TEXT_FEATURE_DIM)
    return RowModel(NeuMF(4, shape, torch.randn(TEXT_N_ITEMS, TEXT_FEATURE_DIM)))


def rows_for(n: int, n_items: int = N_ITEMS) -> torch.Tensor:
    rng = np.random.default_rng(5)
    return torch.as_tensor(np.stack([rng.integers(0, 4, n), *(rng.integers(0, n_items, n) for _ in range(3))],
                                    1))


def flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().double() for p in module.parameters()])


# -- the per-row loss ---------------------------------------------------------------------------------------

def test_row_bce_without_reduction_is_the_per_row_sum_of_the_bce_terms() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 4.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64).expand(2, -1)

    def sigmoid(x: float) -> float:
        return 1 / (1 + np.exp(-x))

    by_hand = torch.tensor([  # the positive's -log σ(x), each negative's -log(1 - σ(x))
        -np.log(sigmoid(2.0)) - np.log(1 - sigmoid(-1.0)) - np.log(1 - sigmoid(0.5)),
        -np.log(sigmoid(-3.0)) - np.log(1 - sigmoid(4.0)) - np.log(1 - sigmoid(0.0)),
    ], dtype=torch.float64)
    torch.testing.assert_close(RowBCE("none")(logits, labels), by_hand)
    torch.testing.assert_close(RowBCE("mean")(logits, labels), by_hand.mean())
    torch.testing.assert_close(RowBCE("sum")(logits, labels), by_hand.sum())


def test_rows_pair_a_user_with_their_positive_and_negatives_other_than_it(
        make_config: Callable[..., RunConfig]) -> None:
    split = store_data(make_config(), 1).split
    rows = record_rows(split, 4, np.random.default_rng(0))
    assert rows.shape == (len(split.train_items), 6)
    np.testing.assert_array_equal(rows[:, 0], split.train_users)
    np.testing.assert_array_equal(rows[:, 1], split.train_items)
    assert (rows[:, 2:] != rows[:, 1:2]).all() and rows[:, 2:].max() < split.n_items


# -- one DP-SGD step ----------------------------------------------------------------------------------------

def one_step(lr: float, clipping_norm: float, weights: torch.Tensor, item_tower: str = "id"
             ) -> tuple[RowModel, RowModel]:
    """(model before, model after) one noise-free DP-SGD step, plain SGD, over ``rows_for(len(weights))``."""
    model = small_row_model(item_tower)
    before = copy.deepcopy(model)
    rows = rows_for(len(weights), model.model.shape.n_items)
    training: PrivateTraining = make_private_training(
        model, torch.optim.SGD(model.parameters(), lr=lr), epoch_loader(rows.numpy(), len(rows)),
        noise_multiplier=0.0, clipping_norm=clipping_norm, noise_generator=torch.Generator().manual_seed(0),
        criterion=WeightedRowBCE(weights))
    training.model.train()
    dp_step(training, rows, LABELS)
    training.model._close()
    return before, model


def clipped_mean_gradient(model: RowModel, weights: torch.Tensor, clipping_norm: float) -> torch.Tensor:
    """Σ_i g_i·min(1, C/‖g_i‖) / B, per-row gradients computed one row at a time with plain autograd."""
    rows, total = rows_for(len(weights), model.model.shape.n_items), None
    for i in range(len(rows)):
        model.zero_grad()
        loss = WeightedRowBCE(weights[i : i + 1], "sum")(model(rows[i : i + 1]), LABELS.expand(1, -1))
        loss.backward()
        grad = torch.cat([p.grad.flatten().double() if p.grad is not None else torch.zeros(p.numel())
                          for p in model.parameters()])
        clipped = grad * min(1.0, clipping_norm / (float(grad.norm()) + 1e-6))
        total = clipped if total is None else total + clipped
    assert total is not None
    return total / len(rows)


def test_one_row_with_a_huge_loss_moves_the_parameters_by_at_most_lr_times_c() -> None:
    lr, c = 0.5, 1.0
    weights = torch.tensor([1e5, 1.0, 1.0, 1.0, 1.0, 1.0])  # row 0's loss (and gradient) scaled 10⁵ times

    before, after = one_step(lr, c, weights)

    change = float((flat(after) - flat(before)).norm())
    assert 0 < change <= lr * c * (1 + 1e-5)
    unclipped = float(clipped_mean_gradient(copy.deepcopy(before), weights, float("inf")).norm())
    assert lr * unclipped > 1000 * lr * c  # without per-row clipping the same step would be > 1000× larger


@pytest.mark.parametrize("item_tower", ["id", "text", "hybrid"])
def test_the_step_is_lr_times_the_mean_of_per_row_clipped_gradients(item_tower: str) -> None:
    lr, c = 0.5, 0.3
    weights = torch.tensor([1e5, 1.0, 30.0, 1.0, 1.0, 1.0])

    before, after = one_step(lr, c, weights, item_tower)

    expected = -lr * clipped_mean_gradient(copy.deepcopy(before), weights, c)
    torch.testing.assert_close(flat(after) - flat(before), expected, rtol=1e-4, atol=1e-7)


def test_user_embeddings_are_inside_the_dp_step() -> None:
    weights = torch.ones(6)
    before, after = one_step(0.5, 1.0, weights)
    changed = {name for (name, p), q in zip(after.named_parameters(), before.parameters(), strict=True)
               if not torch.equal(p, q)}
    assert {f"model.{name}" for name in PRIVATE_PARAMETERS} <= changed


def test_an_empty_poisson_batch_still_takes_a_counted_noise_only_step() -> None:
    model = small_row_model()
    before = flat(model)
    rows = rows_for(6)
    training = make_private_training(
        model, torch.optim.SGD(model.parameters(), lr=0.1), epoch_loader(rows.numpy(), 2),
        noise_multiplier=1.0, clipping_norm=1.0, noise_generator=torch.Generator().manual_seed(0))
    training.model.train()

    assert dp_step(training, rows[:0], LABELS) is None

    training.model._close()
    assert training.engine.accountant.history == [(1.0, 1 / 3, 1)]
    assert bool((flat(model) != before).all())  # noise σ·C/B landed on every parameter


# -- the store round and its ledger -------------------------------------------------------------------------

def record_config(make_config: Callable[..., RunConfig], **overrides: Any) -> RunConfig:
    values: dict[str, Any] = {"privacy": "interaction", "sigma_from_target": False, "noise_multiplier": 1.1,
                              "clipping_norm": 1.0, "local_epochs": 2, "batch_size": 24, "num_negatives": 2,
                              "target_epsilon": 50.0}
    values.update(overrides)
    return make_config(**values)


def store_model(config: RunConfig) -> tuple[NeuMF, Any]:
    data = store_data(config, 1)
    torch.manual_seed(0)
    return NeuMF(data.split.n_users, model_shape(config, data.split.n_items, data.features)), data.split


def test_round_records_sigma_q_and_steps_exactly_as_opacus_counted(make_config: Callable[..., RunConfig],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    config = record_config(make_config)  # 80 rows at batch size 24: 3 batches of 26 (80 is no multiple of 26)
    model, split = store_model(config)
    engines: list[Any] = []
    real = record_dp.make_private_training

    def keep_engine(*args: Any, **kwargs: Any) -> PrivateTraining:
        training = real(*args, **kwargs)
        engines.append(training.engine)
        return training

    monkeypatch.setattr(record_dp, "make_private_training", keep_engine)
    ledger = PrivacyLedger(config.delta)

    update = record_level_round(model, split, config, ledger, 4, np.random.default_rng(0), CPU)

    assert len(split.train_items) == 80 and steps_per_epoch(80, 24) == 3
    assert ledger.entries == [LedgerEntry(round=4, noise_multiplier=1.1, sample_rate=1 / 3, steps=2 * 3)]
    assert engines[0].accountant.history == [(1.1, 1 / 3, 6)]
    assert [a.shape for a in update.arrays] == shared_shapes(model.shape) and update.weight == 1


@pytest.mark.parametrize("k", [3, 93, 99])
def test_the_ledger_counts_the_steps_opacus_poisson_sampler_takes(k: int) -> None:
    n_rows, batch_size = 7 * k + 3, 7
    assert steps_per_epoch(n_rows, batch_size) == k
    assert len(epoch_loader(np.zeros((n_rows, 4), dtype=np.int64), batch_size)) == k  # q = 1/len(loader)
    opacus = len(UniformWithReplacementSampler(num_samples=n_rows, sample_rate=1 / k))
    assert opacus_steps_per_epoch(n_rows, batch_size) == opacus
    assert opacus == (k - 1 if k in (93, 99) else k)  # int(1/(1/93)) == 92 in floating point


def test_a_record_round_past_the_budget_is_refused_and_records_nothing(
        make_config: Callable[..., RunConfig]) -> None:
    config = record_config(make_config, target_epsilon=1.0)
    model, split = store_model(config)
    before = [p.detach().clone() for p in model.parameters()]
    ledger = PrivacyLedger(config.delta)

    with pytest.raises(BudgetExhausted, match=r"round 1 would reach ε=.* > target-epsilon 1\.0"):
        record_level_round(model, split, config, ledger, 1, np.random.default_rng(0), CPU)

    assert ledger.entries == []
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
