"""The centralized trainer's hook for per-epoch text features (the cold-start title-dropout probe)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from shared.config import RunConfig
from shared.model import get_shared
from shared.workload import load_workload
from simulations.centralized import train_model

FEATURE_DIM = 12


def _train(config: RunConfig, features: np.ndarray,
           epoch_features: Callable[[np.random.Generator], np.ndarray] | None
           ) -> tuple[list[np.ndarray], np.ndarray]:
    model, _ = train_model(config, load_workload(config), features, 2, verbose=False,
                           epoch_features=epoch_features)
    buffer: torch.Tensor = model.item_features  # type: ignore[assignment]
    return get_shared(model), buffer.numpy().copy()


def test_epoch_features_are_trained_on_and_the_catalog_text_comes_back(make_config: Callable[..., RunConfig]
                                                                         ) -> None:
    config = make_config(item_tower="text")
    n_items = load_workload(config).split.n_items
    features = np.random.default_rng(0).normal(size=(n_items, FEATURE_DIM)).astype(np.float32)
    other = np.random.default_rng(1).normal(size=(n_items, FEATURE_DIM)).astype(np.float32)
    plain, plain_buffer = _train(config, features, None)
    same, same_buffer = _train(config, features, lambda rng: features)
    changed, changed_buffer = _train(config, features, lambda rng: other)
    for a, b in zip(plain, same, strict=True):  # the hook draws from its own stream: nothing else moves
        np.testing.assert_array_equal(a, b)
    assert any(not np.allclose(a, b) for a, b in zip(plain, changed, strict=True))
    for buffer in (plain_buffer, same_buffer, changed_buffer):  # the model ends on the catalog's text
        np.testing.assert_array_equal(buffer, features)
    np.testing.assert_array_equal(features, np.random.default_rng(0).normal(size=features.shape)
                                  .astype(np.float32))  # and the caller's array was never written
