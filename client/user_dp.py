"""User-level DP-FedAvg inside a store (McMahan et al., "Learning Differentially Private Recurrent Language
Models", ICLR 2018), with the store's users as the virtual clients.

Each round the store Poisson-samples its users at rate q. Every sampled user starts from the global shared
parameters, trains a few local SGD steps on their own interactions (their private embedding trains too), and
their shared-parameter delta is clipped to L2 norm C. The store sends Σ clipped deltas plus Gaussian noise of
variance σ²C²/K per coordinate: under SecAgg+ the server only sees the sum over ≥ K stores, which then carries
noise σ²C² — the central-DP mechanism, without trusting the server with a clean sum. Without SecAgg+ (K = 1)
each store adds the full σ²C².

Why user embeddings may train without noise: a user's embedding depends only on that user's data and on
released (DP) parameters, and never leaves the store (joint DP, the "billboard" model); the user's whole
data is the DP unit anyway. The per-user local runs are vectorised with ``torch.func.vmap`` (no Python loop
over users).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from client.trainers import BudgetExhausted, LocalUpdate, dp_noise_generator
from shared.config import RunConfig
from shared.ledger import PrivacyLedger
from shared.model import PRIVATE_PARAMETERS, NeuMF, federated_names, shared_names
from shared.privacy import federation_noise_multiplier, noise_shares
from shared.split import Split
from shared.training import TrainPairs, TrainSettings, train_pointwise

ROW_TABLE_SUFFIXES = ("_item.weight", "item_bias.weight")  # per-item tables: sparse, row-wise signal


def user_level_round(
    model: NeuMF,
    split: Split,
    config: RunConfig,
    ledger: PrivacyLedger,
    round_: int,
    rng: np.random.Generator,
    device: torch.device,
    noise_generator: torch.Generator | None = None,
    noise_multiplier: float | None = None,
) -> LocalUpdate:
    """One store round of user-level DP-FedAvg; records the round in ``ledger`` (budget checked first)."""
    # σ as the server announced it (saves every store the calibration), else calibrated here; either way the
    # budget check below is the store's own, so a lowered σ makes the store refuse rather than under-noise.
    sigma = federation_noise_multiplier(config) if noise_multiplier is None else noise_multiplier
    q = config.user_sample_rate
    projected = ledger.projected_epsilon(sigma, q, 1)
    if projected > config.target_epsilon:
        raise BudgetExhausted(
            f"round {round_} would reach ε={projected:.3f} > target-epsilon "
            f"{config.target_epsilon} at δ={config.delta}; this store stops contributing"
        )
    pairs = TrainPairs(split)
    sampled = np.flatnonzero(rng.random(split.n_users) < q)
    names = shared_names(model)
    learned = federated_names(names, config.learned_shared)
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters() if n in names}
    losses: list[torch.Tensor] = []
    diverged = 0
    for start in range(0, len(sampled), config.user_chunk_size):
        chunk = sampled[start : start + config.user_chunk_size]
        deltas, user_rows, loss = local_user_runs(model, split, pairs, chunk, config, rng, device)
        norms = update_norms(deltas)
        clipped_sum = clip_and_sum(deltas, config.clipping_norm, norms)
        for n in learned:
            total[n] += clipped_sum[n]
        keep_private_rows(model, torch.as_tensor(chunk, device=device), user_rows)
        losses.append(loss.detach().cpu())
        diverged += int((~torch.isfinite(norms)).sum())
    add_noise_share(  # only the learned parameters: the others are sent as exact zeros, which reveal nothing
        {n: total[n] for n in learned},
        sigma * config.clipping_norm / math.sqrt(noise_shares(config)),
        noise_generator or dp_noise_generator(config, rng),
    )
    if config.user_refresh_epochs:
        refresh_private_embeddings(model, pairs, config, rng, device)
    ledger.record(round_, sigma, q, 1)
    return LocalUpdate([total[n].cpu().numpy() for n in names], weight=1, loss=typical_loss(losses),
                       diverged=diverged)


def typical_loss(per_user: list[torch.Tensor]) -> float:
    """The median sampled shopper's local loss (NaN when none was sampled).

    Why the median: with large local rates a few shoppers' runs can blow up (loss 1e28 or inf) while the
    rest train normally; a mean would then report the outliers, not the round. Those runs are counted
    separately (``LocalUpdate.diverged``) and cannot hurt privacy: they are clipped or count zero.
    """
    if not per_user:
        return float("nan")
    losses = torch.cat(per_user)
    losses = losses[torch.isfinite(losses)]
    return float(losses.median()) if len(losses) else float("inf")


def local_user_runs(
    model: NeuMF,
    split: Split,
    pairs: TrainPairs,
    users: np.ndarray,
    config: RunConfig,
    rng: np.random.Generator,
    device: torch.device,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
    """Train each user in ``users`` from the current shared parameters, all at once.

    Returns per-user deltas of the learned shared parameters ({name: [U, ...]}, ``federated-parameters``),
    the users' new private rows ({name: [U, dim]}) and each user's mean local loss [U]. Each local step uses
    ``user-batch-size`` of the user's train items (with replacement) and ``num-negatives`` negatives each.
    The shared parameters the federation does not learn enter as constants (no per-user copy, no gradient).
    """
    n_users, steps = len(users), config.user_local_steps
    params = {n: p.detach() for n, p in model.named_parameters()}
    names = federated_names(shared_names(model), config.learned_shared)
    local = {n: params[n].unsqueeze(0).repeat(n_users, *([1] * params[n].dim())) for n in names}
    for n in PRIVATE_PARAMETERS:
        local[n] = params[n][torch.as_tensor(users, device=device)].unsqueeze(1).clone()  # [U, 1, dim]
    items, labels = _local_batches(split, pairs, users, steps, config, rng)
    items_t = torch.as_tensor(items, device=device)
    labels_t = torch.as_tensor(labels, device=device)
    zero_user = torch.zeros(items.shape[-1], dtype=torch.long, device=device)
    bce = nn.BCEWithLogitsLoss()

    constants = {n: p for n, p in params.items() if n not in local}

    def loss_of(p: dict[str, torch.Tensor], batch_items: torch.Tensor) -> torch.Tensor:
        return bce(functional_call(model, {**constants, **p}, (zero_user, batch_items)), labels_t)

    step = vmap(grad_and_value(loss_of))
    lr = {
        n: (
            config.user_embedding_learning_rate
            if n in PRIVATE_PARAMETERS
            else config.user_learning_rate
            if n.endswith(ROW_TABLE_SUFFIXES)
            else config.user_dense_learning_rate
        )
        for n in local
    }
    loss_total = torch.zeros(n_users, device=device)
    for s in range(steps):
        grads, loss = step(local, items_t[:, s])
        loss_total += loss.detach()
        for n in local:
            local[n] = local[n] - lr[n] * grads[n]
    deltas = {n: local[n] - params[n].unsqueeze(0) for n in names}
    user_rows = {n: local[n].squeeze(1) for n in PRIVATE_PARAMETERS}
    return deltas, user_rows, loss_total / steps


def _local_batches(
    split: Split,
    pairs: TrainPairs,
    users: np.ndarray,
    steps: int,
    config: RunConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Items [U, steps, P·(1+neg)] (P positives then their negatives) and the matching 0/1 labels."""
    positives_per_step, negs = config.user_batch_size, config.num_negatives
    starts = split.train_indptr[users]
    lengths = split.train_indptr[users + 1] - starts
    picks = (rng.random((len(users), steps, positives_per_step)) * lengths[:, None, None]).astype(np.int64)
    positives = split.train_items[starts[:, None, None] + picks]
    owners = np.repeat(users, steps * positives_per_step * negs)
    negatives = pairs.negatives_for(owners, rng).reshape(len(users), steps, positives_per_step * negs)
    items = np.concatenate([positives, negatives], axis=2)
    labels = np.concatenate(
        [np.ones(positives_per_step, np.float32), np.zeros(positives_per_step * negs, np.float32)]
    )
    return items, labels


def keep_private_rows(model: NeuMF, users: torch.Tensor, user_rows: dict[str, torch.Tensor]) -> None:
    """Store the users' new private rows; a user whose local run diverged keeps the rows it had.

    The shared part of such a run already counts zero (``clip_and_sum``); its private rows must not carry
    inf/NaN into the user's later rounds and recommendations either (with q = 1, FedAdam and ε ≤ 3's noise,
    local SGD on the user's rows at a rate of 10 diverged for a few percent of users).
    """
    finite = torch.stack([torch.isfinite(user_rows[n]).all(dim=1) for n in PRIVATE_PARAMETERS]).all(dim=0)
    with torch.no_grad():
        params = dict(model.named_parameters())
        for n in PRIVATE_PARAMETERS:
            params[n][users[finite]] = user_rows[n][finite]


def update_norms(deltas: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each user's L2 norm over all shared parameters jointly: [U] (non-finite for a diverged run)."""
    return torch.sqrt(torch.stack([d.flatten(1).pow(2).sum(1) for d in deltas.values()]).sum(0))


def clip_and_sum(deltas: dict[str, torch.Tensor], clipping_norm: float,
                 norms: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Σ_u Δ_u · min(1, C/‖Δ_u‖) with the norm over all shared parameters jointly; a non-finite Δ_u counts 0.

    Each user then moves the sum by at most C — the sensitivity the noise is calibrated to. ``norms``: the
    deltas' ``update_norms`` when the caller already has them (the round also counts the non-finite ones).
    """
    if norms is None:
        norms = update_norms(deltas)
    factor = torch.clamp(clipping_norm / (norms + 1e-12), max=1.0)
    finite = torch.isfinite(norms)
    factor = torch.where(finite, factor, torch.zeros_like(factor))
    out = {}
    for n, d in deltas.items():
        safe = torch.where(finite.view(-1, *([1] * (d.dim() - 1))), d, torch.zeros_like(d))
        out[n] = (safe * factor.view(-1, *([1] * (d.dim() - 1)))).sum(0)
    return out


def add_noise_share(total: dict[str, torch.Tensor], std: float, generator: torch.Generator) -> None:
    """Add N(0, std²) to every coordinate, in place."""
    for tensor in total.values():
        noise = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
        tensor += noise.to(tensor.device) * std


def refresh_private_embeddings(
    model: NeuMF, pairs: TrainPairs, config: RunConfig, rng: np.random.Generator, device: torch.device
) -> None:
    """Refit every user's private embedding against the current shared parameters (frozen).

    Free under joint DP: nothing released depends on it except through that user's own (clipped, noised)
    contribution in later rounds.
    """
    shared = [p for n, p in model.named_parameters() if n not in PRIVATE_PARAMETERS]
    for p in shared:
        p.requires_grad_(False)
    try:
        settings = TrainSettings(
            config.user_refresh_epochs, config.batch_size, config.user_refresh_learning_rate,
            config.num_negatives
        )
        with model.frozen_item_vectors():
            train_pointwise(model, pairs, settings, rng, device)
    finally:
        for p in shared:
            p.requires_grad_(True)
