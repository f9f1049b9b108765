"""Pointwise NeuMF training (He et al. 2017): each train interaction is a positive, with ``num_negatives``
items the user never trained on as negatives, binary cross-entropy, Adam.

The centralized baseline and each store's non-private local training run this same function, so the federated
vs centralized ratio compares training schemes, not implementations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from shared.split import Split


class TrainPairs:
    """Negative sampling for a split: uniform over items outside a user's train set (vectorised rejection)."""

    MAX_REJECTION_ROUNDS = 100

    def __init__(self, split: Split) -> None:
        self.split = split
        self._train_keys = np.sort(split.train_users * split.n_items + split.train_items)

    def negatives_for(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One negative item per entry of ``users`` (repeat users to draw several).

        Each rejection round re-checks only the entries it redrew (a few percent), not the whole draw: the
        same draws and result as checking everything, at a fifth of the lookups of an epoch's negatives."""
        n_items = self.split.n_items
        items = rng.integers(0, n_items, size=len(users))
        pending = np.arange(len(users))
        for _ in range(self.MAX_REJECTION_ROUNDS):
            clash = pending[self._is_train(users[pending], items[pending])]
            if not len(clash):
                return items
            items[clash] = rng.integers(0, n_items, size=len(clash))
            pending = clash
        raise ValueError("could not draw negatives: some user has interacted with (almost) every item")

    def _is_train(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        if not len(self._train_keys):
            return np.zeros(len(users), dtype=bool)
        keys = users * self.split.n_items + items
        pos = np.minimum(np.searchsorted(self._train_keys, keys), len(self._train_keys) - 1)
        return self._train_keys[pos] == keys

    def epoch(self, num_negatives: int, rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Shuffled (users, items, labels) of one epoch: every train interaction plus its negatives."""
        pos_u, pos_i = self.split.train_users, self.split.train_items
        neg_u = np.repeat(pos_u, num_negatives)
        neg_i = self.negatives_for(neg_u, rng)
        users = np.concatenate([pos_u, neg_u])
        items = np.concatenate([pos_i, neg_i])
        labels = np.concatenate([np.ones(len(pos_u), np.float32), np.zeros(len(neg_u), np.float32)])
        order = rng.permutation(len(users))
        return users[order], items[order], labels[order]


@dataclass(frozen=True)
class TrainSettings:
    epochs: int
    batch_size: int
    learning_rate: float
    num_negatives: int


def train_pointwise(model: nn.Module, pairs: TrainPairs, settings: TrainSettings, rng: np.random.Generator,
                    device: torch.device) -> float:
    """Train ``model`` in place; returns the mean BCE loss of the last epoch."""
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    loss_fn = nn.BCEWithLogitsLoss()
    last = float("nan")
    for _ in range(settings.epochs):
        epoch = pairs.epoch(settings.num_negatives, rng)
        users, items, labels = (torch.as_tensor(a, device=device) for a in epoch)
        total, batches = 0.0, 0
        for start in range(0, len(users), settings.batch_size):
            stop = start + settings.batch_size
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(users[start:stop], items[start:stop]), labels[start:stop])
            loss.backward()
            optimizer.step()
            total += loss.item()
            batches += 1
        last = total / max(batches, 1)
    return last
