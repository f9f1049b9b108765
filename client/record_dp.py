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

import numpy as np
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from client.trainers import BudgetExhausted, LocalUpdate
from shared.config import RunConfig
from shared.ledger import PrivacyLedger, noise_for_target
from shared.model import NeuMF, get_shared
from shared.split import Split


class RowModel(nn.Module):
    """NeuMF over rows [user, positive, negative_1..n] → logits [B, 1 + n]."""

    def __init__(self, model: NeuMF) -> None:
        super().__init__()
        self.model = model

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.model(rows[:, :1].contiguous(), rows[:, 1:].contiguous())


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
    return max(1, n_rows // batch_size)


def record_noise_multiplier(config: RunConfig, n_rows: int) -> tuple[float, float, int]:
    """(σ, q, steps per round) for this store; σ given or calibrated to spend the budget over all rounds."""
    steps = config.local_epochs * steps_per_epoch(n_rows, config.batch_size)
    q = 1.0 / steps_per_epoch(n_rows, config.batch_size)
    if not config.sigma_from_target:
        return config.noise_multiplier, q, steps
    return noise_for_target(config.target_epsilon, config.delta, q, steps * config.num_rounds), q, steps


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
    data = TensorDataset(torch.as_tensor(rows))
    loader = DataLoader(data, batch_size=len(rows) // steps_per_epoch(len(rows), config.batch_size))
    row_model = RowModel(model)
    optimizer = torch.optim.Adam(row_model.parameters(), lr=config.learning_rate)
    engine = PrivacyEngine(accountant="rdp")
    generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Secure RNG turned off" — documented choice (docs/privacy.md)
        private_model, private_opt, criterion, private_loader = engine.make_private(
            module=row_model, optimizer=optimizer, criterion=RowBCE(), data_loader=loader,
            noise_multiplier=sigma, max_grad_norm=config.clipping_norm, grad_sample_mode="ghost",
            poisson_sampling=True, noise_generator=generator)
    private_model.train()
    total, count = 0.0, 0
    for _ in range(config.local_epochs):
        for (batch,) in private_loader:
            batch = batch.to(device)
            scale = 1.0
            if len(batch) == 0:  # keep the analysed noise-only step instead of skipping it
                batch, scale = torch.zeros((1, rows.shape[1]), dtype=torch.long, device=device), 0.0
            private_opt.zero_grad()
            target = labels.to(device).expand(len(batch), -1)
            loss = criterion(private_model(batch), target) * scale
            loss.backward()
            private_opt.step()
            total += float(loss.detach()) if scale else 0.0
            count += 1
    private_model._close()
    taken = sum(n for _, _, n in engine.accountant.history)
    if taken != steps:
        raise RuntimeError(f"Opacus took {taken} DP steps, the ledger expected {steps}")
    ledger.record(round_, sigma, q, steps)
    delta = [after - start for after, start in zip(get_shared(model), before, strict=True)]
    return LocalUpdate(delta, weight=1, loss=total / max(count, 1))
