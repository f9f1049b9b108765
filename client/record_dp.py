"""Record-level DP-SGD inside a store with Opacus (the alternative to user-level DP).

The DP unit is one interaction with its sampled negatives, clipped as one example (``RowBCE`` sums the row's
1 + n BCE terms). The user embeddings are inside the same DP-SGD: otherwise one record would move its user's
embedding and through it the user's other contributions, and the ε would no longer cover what is sent.
Negatives are drawn uniformly from every item but the row's own positive, so a row depends on its own
interaction only. Ghost clipping keeps per-example gradients of the embedding tables cheap (~25× faster than
hooks here, ``research/opacus_probe.md``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from opacus import GradSampleModule, PrivacyEngine
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler, TensorDataset

from client.trainers import BudgetExhausted, LocalUpdate, dp_noise_generator
from shared.config import RunConfig
from shared.ledger import PrivacyLedger, noise_for_target
from shared.model import NeuMF, get_shared
from shared.split import Split


class RowModel(nn.Module):
    """NeuMF over rows [user, positive, negative_1..n] → logits [B, 1 + n]."""

    def __init__(self, model: NeuMF) -> None:
        super().__init__()
        model.project_catalog_once = False  # every example's gradient must come from its own rows
        self.model = model

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        items = rows[:, 1:].contiguous()
        # The user column is materialised at the items' shape: broadcast inside NeuMF would hand the user
        # embedding a stride-0 index tensor, which Opacus' ghost norm sampler for Embedding cannot ``view``.
        users = rows[:, :1].expand_as(items).contiguous()
        return self.model(users, items)


class RowBCE(nn.Module):
    """Per-row loss = sum of the row's BCE terms; ``reduction`` as Opacus' ghost clipping expects."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        per_row = nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none").sum(dim=1)
        if self.reduction == "none":
            return per_row
        return per_row.mean() if self.reduction == "mean" else per_row.sum()


def record_rows(split: Split, num_negatives: int, rng: np.random.Generator) -> np.ndarray:
    """[N, 2 + n] rows: user, positive, n uniform negatives ≠ the positive."""
    positives = split.train_items
    negatives = rng.integers(0, split.n_items - 1, size=(len(positives), num_negatives))
    negatives += negatives >= positives[:, None]  # skip the row's own positive, uniformly over the rest
    return np.concatenate([split.train_users[:, None], positives[:, None], negatives], axis=1)


def steps_per_epoch(n_rows: int, batch_size: int) -> int:
    """k: the batches one epoch's loader holds (at least 1); the Poisson rate is q = 1/k."""
    return max(1, n_rows // batch_size)


def opacus_steps_per_epoch(n_rows: int, batch_size: int) -> int:
    """DP steps Opacus' Poisson sampler takes per epoch at q = 1/k: ``int(1/q)``, which float rounding makes
    k - 1 for some k (93, 99, 105, ...). The ledger counts these, the steps that actually ran."""
    return int(1 / (1.0 / steps_per_epoch(n_rows, batch_size)))


def record_noise_multiplier(config: RunConfig, n_rows: int) -> tuple[float, float, int]:
    """(σ, q, steps per round) for this store; σ given or calibrated to spend the budget over all rounds."""
    steps = config.local_epochs * opacus_steps_per_epoch(n_rows, config.batch_size)
    q = 1.0 / steps_per_epoch(n_rows, config.batch_size)
    if not config.sigma_from_target:
        return config.noise_multiplier, q, steps
    return noise_for_target(config.target_epsilon, config.delta, q, steps * config.num_rounds), q, steps


def epoch_loader(rows: np.ndarray, batch_size: int) -> DataLoader:
    """A loader of exactly k = ``steps_per_epoch`` batches, so that Opacus' q = 1/len(loader) is the ledger's
    (a remainder batch would make it 1/(k + 1)). Opacus replaces the batches by Poisson sampling and only
    reads the length; it warns about a loader's ``drop_last``, hence the explicit batch sampler."""
    data = TensorDataset(torch.as_tensor(rows))
    k = steps_per_epoch(len(rows), batch_size)
    batches = BatchSampler(SequentialSampler(data), len(rows) // k, drop_last=True)
    return DataLoader(data, batch_sampler=batches)


@dataclass(frozen=True)
class PrivateTraining:
    """One round's Opacus DP-SGD: the wrapped module, DP optimizer, ghost-clipping criterion and Poisson
    loader, and the engine whose accountant counts the steps taken."""

    engine: PrivacyEngine
    model: GradSampleModule
    optimizer: torch.optim.Optimizer
    criterion: Callable[..., Any]
    loader: DataLoader


def make_private_training(module: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader,
                          noise_multiplier: float, clipping_norm: float, noise_generator: torch.Generator,
                          criterion: nn.Module | None = None) -> PrivateTraining:
    """Opacus DP-SGD over every parameter of ``module``: each example's gradient clipped to ``clipping_norm``
    (ghost clipping), Gaussian noise σ·C on the sum, Poisson sampling at q = 1/len(loader)."""
    engine = PrivacyEngine(accountant="rdp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Secure RNG turned off" — documented choice (docs/privacy.md)
        private_model, private_opt, private_criterion, private_loader = engine.make_private(
            module=module, optimizer=optimizer, criterion=criterion if criterion is not None else RowBCE(),
            data_loader=loader, noise_multiplier=noise_multiplier, max_grad_norm=clipping_norm,
            grad_sample_mode="ghost", poisson_sampling=True, noise_generator=noise_generator)
    return PrivateTraining(engine, private_model, private_opt, private_criterion, private_loader)


def dp_step(training: PrivateTraining, batch: torch.Tensor, labels: torch.Tensor) -> float | None:
    """One DP-SGD step on ``batch`` (rows [B, 2 + n], ``labels`` [1 + n]); returns its mean loss.

    An empty Poisson batch still takes the analysed noise-only step (a zero-loss dummy row) and returns None.
    """
    scale = 1.0
    if len(batch) == 0:  # keep the analysed noise-only step instead of skipping it
        batch, scale = torch.zeros((1, batch.shape[1]), dtype=torch.long, device=batch.device), 0.0
    training.optimizer.zero_grad()
    target = labels.to(batch.device).expand(len(batch), -1)
    loss = training.criterion(training.model(batch), target) * scale
    loss.backward()
    training.optimizer.step()
    return float(loss.detach()) if scale else None


def record_level_round(model: NeuMF, split: Split, config: RunConfig, ledger: PrivacyLedger, round_: int,
                       rng: np.random.Generator, device: torch.device) -> LocalUpdate:
    rows = record_rows(split, config.num_negatives, rng)
    sigma, q, steps = record_noise_multiplier(config, len(rows))
    projected = ledger.projected_epsilon(sigma, q, steps)
    if projected > config.target_epsilon:
        raise BudgetExhausted(f"round {round_} would reach ε={projected:.3f} > target-epsilon "
                              f"{config.target_epsilon} at δ={config.delta}; this store stops contributing")
    before = get_shared(model)
    labels = torch.zeros(config.num_negatives + 1)
    labels[0] = 1.0
    row_model = RowModel(model)
    optimizer = torch.optim.Adam(row_model.parameters(), lr=config.learning_rate)
    generator = dp_noise_generator(config, rng, device)  # Opacus draws the noise where the parameters are
    training = make_private_training(row_model, optimizer, epoch_loader(rows, config.batch_size), sigma,
                                     config.clipping_norm, generator)
    training.model.train()
    total, count = 0.0, 0
    for _ in range(config.local_epochs):
        for (batch,) in training.loader:
            loss = dp_step(training, batch.to(device), labels)
            total += loss or 0.0
            count += 1
    training.model._close()
    taken = sum(n for _, _, n in training.engine.accountant.history)
    if taken != steps:
        raise RuntimeError(f"Opacus took {taken} DP steps, the ledger expected {steps}")
    ledger.record(round_, sigma, q, steps)
    delta = [after - start for after, start in zip(get_shared(model), before, strict=True)]
    return LocalUpdate(delta, weight=1, loss=total / max(count, 1))
