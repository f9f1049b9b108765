"""Shared fixtures: a tiny synthetic dataset and a small, fast RunConfig over it.

The tiny data: 30 users, 120 items (the protocol's 99 sampled evaluation negatives need more items than any
user touches), 10 interactions per user, three stores named in users.csv. Dimensions are chosen so that no
shared tensor has the shape of a store's private tensor (10 users per store: (10, 4) and (10, 8)).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared.config import RunConfig, from_mapping

TINY_USERS = 30
TINY_ITEMS = 120
TINY_INTERACTIONS_PER_USER = 10
TINY_STORES = ("north", "south", "west")
GENRES = ("Action", "Comedy", "Drama")
TINY_SEED = 7

# Small model: shared shapes (120, 4), (120, 8), (16, 16), (16,), (8, 16), (8,), (1, 12), (1,).
TINY_MODEL: dict[str, Any] = {"gmf-dim": 4, "mlp-dim": 8, "mlp-layers": "16,8", "item-tower": "id"}


def write_tiny_dataset(directory: Path, seed: int = TINY_SEED) -> Path:
    """interactions.csv, items.csv (titles + categories) and users.csv (3 stores), from a fixed seed."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "items.csv").write_text(
        "item_id,title,categories\n"
        + "".join(f"{i},Item {i},{GENRES[i % 3]}|{GENRES[(i + 1) % 3]}\n" for i in range(TINY_ITEMS)),
        encoding="utf-8")
    # Popularity-skewed items so that a trained model has something to learn.
    popularity = 1.0 / np.arange(1, TINY_ITEMS + 1)
    popularity /= popularity.sum()
    rows = []
    for user in range(TINY_USERS):
        items = rng.choice(TINY_ITEMS, size=TINY_INTERACTIONS_PER_USER, replace=False, p=popularity)
        times = rng.integers(0, 50, size=TINY_INTERACTIONS_PER_USER)  # small range: some timestamp ties
        rows += [f"{user},{item},{time},{int(rng.integers(1, 6))}\n"
                 for item, time in zip(items.tolist(), times.tolist(), strict=True)]
    (directory / "interactions.csv").write_text("user_id,item_id,timestamp,rating\n" + "".join(rows),
                                                encoding="utf-8")
    (directory / "users.csv").write_text(
        "user_id,store\n" + "".join(f"{u},{TINY_STORES[u % 3]}\n" for u in range(TINY_USERS)),
        encoding="utf-8")
    return directory


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    """Directory of the tiny dataset (fresh per test)."""
    return write_tiny_dataset(tmp_path / "data")


def tiny_config(data_dir: Path, **overrides: Any) -> RunConfig:
    """A validated RunConfig on ``data_dir``: small model, no DP, no SecAgg+, unless overridden.

    ``overrides`` use field names (``num_rounds=2``) and are turned into kebab-case keys.
    """
    values: dict[str, Any] = {
        "dataset": str(data_dir), "partition": "stores-file", "num-stores": len(TINY_STORES),
        "num-rounds": 2, "batch-size": 64, "learning-rate": 0.01, "torch-threads": 1, "device": "cpu",
        "privacy": "none", "secagg": False, "server-optimizer": "sgd", "server-learning-rate": 1.0,
        "federated-parameters": "all", "user-refresh-learning-rate": 0.01,  # the tiny ID tower learns it all
        **TINY_MODEL,
    }
    values.update({key.replace("_", "-"): value for key, value in overrides.items()})
    return from_mapping(values)


@pytest.fixture
def make_config(tiny_data: Path) -> Callable[..., RunConfig]:
    """``make_config(num_rounds=3, ...)``: tiny_config on this test's tiny dataset."""

    def build(**overrides: Any) -> RunConfig:
        return tiny_config(tiny_data, **overrides)

    return build
