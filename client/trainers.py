"""One store's local round in each privacy mode; every mode returns the update of the shared parameters only.

- ``none``: pointwise NeuMF training (shared/training.py) on the store's users; sends the delta.
- ``user`` (default): user-level DP-FedAvg inside the store (client/user_dp.py); sends Σ clipped user deltas
  plus the store's share of the Gaussian noise.
- ``interaction``: record-level Opacus DP-SGD inside the store (client/record_dp.py); sends the delta.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from shared.config import RunConfig
from shared.ledger import PrivacyLedger
from shared.model import NeuMF, get_shared
from shared.split import Split
from shared.training import TrainPairs, TrainSettings, train_pointwise


def dp_noise_generator(config: RunConfig, rng: np.random.Generator,
                       device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of a round's DP noise: seeded from the run (reproducible audits) unless ``secure-rng``,
    then from the OS CSPRNG. Every privacy mode takes its noise from here, so the switch can't be missed."""
    seed = int.from_bytes(os.urandom(8), "little") if config.secure_rng else int(rng.integers(2**62))
    return torch.Generator(device=device).manual_seed(seed)


class BudgetExhausted(RuntimeError):
    """The round would take the store past its privacy budget; the store refuses to train."""


@dataclass(frozen=True)
class LocalUpdate:
    arrays: list[np.ndarray]  # the shared-parameter update, in shared_names order
    weight: int               # num_examples reported to the strategy
    loss: float
    diverged: int = 0         # user-level DP: sampled shoppers whose local run went non-finite (counted zero)


def train_store(model: NeuMF, split: Split, config: RunConfig, ledger: PrivacyLedger, round_: int,
                rng: np.random.Generator, device: torch.device, noise_multiplier: float | None = None
                ) -> LocalUpdate:
    if config.privacy == "user":
        from client.user_dp import user_level_round

        return user_level_round(model, split, config, ledger, round_, rng, device,
                                noise_multiplier=noise_multiplier)
    if config.privacy == "interaction":
        from client.record_dp import record_level_round

        return record_level_round(model, split, config, ledger, round_, rng, device)
    before = get_shared(model)
    settings = TrainSettings(config.local_epochs, config.batch_size, config.learning_rate,
                             config.num_negatives)
    loss = train_pointwise(model, TrainPairs(split), settings, rng, device)
    delta = [after - start for after, start in zip(get_shared(model), before, strict=True)]
    return LocalUpdate(delta, weight=len(split.train_users), loss=loss)
