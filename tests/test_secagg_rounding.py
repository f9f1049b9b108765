"""Specification of client/secagg_rounding.py: SecAgg+'s stochastic rounding drawn from the run seed."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.common.secure_aggregation.quantization import quantize

from client.secagg_rounding import rounding_seed, seeded_global_numpy
from shared.config import RunConfig

VALUES = [np.linspace(-1.0, 1.0, 1001)]


def quantized(seed: np.random.SeedSequence | None) -> np.ndarray:
    """What Flower's SecAgg+ client sends for VALUES (its rounding draws from NumPy's global generator)."""
    with seeded_global_numpy(seed):
        return quantize(VALUES, clipping_range=8.0, target_range=1 << 16)[0]


def test_one_store_round_and_seed_always_round_the_same_way(make_config: Callable[..., RunConfig]) -> None:
    config = make_config(seed=7)
    np.random.seed(1)
    first = quantized(rounding_seed(config, store=2, server_round=3))
    np.random.seed(2)
    again = quantized(rounding_seed(config, store=2, server_round=3))
    np.testing.assert_array_equal(first, again)
    for other in (rounding_seed(config, 1, 3), rounding_seed(config, 2, 4),
                  rounding_seed(make_config(seed=8), 2, 3)):
        assert not np.array_equal(quantized(other), first)


def test_the_global_generator_is_restored_after_the_block(make_config: Callable[..., RunConfig]) -> None:
    np.random.seed(5)
    expected = np.random.rand(4)
    np.random.seed(5)
    with seeded_global_numpy(rounding_seed(make_config(), 0, 1)):
        np.random.rand(100)
    np.testing.assert_array_equal(np.random.rand(4), expected)


def test_secure_rng_leaves_the_rounding_to_os_entropy(make_config: Callable[..., RunConfig]) -> None:
    config = make_config(secure_rng=True)
    assert rounding_seed(config, 0, 1) is None
    np.random.seed(None)
    assert not np.array_equal(quantized(rounding_seed(config, 0, 1)), quantized(rounding_seed(config, 0, 1)))
