"""Reproducible SecAgg+ quantization: the same run seed gives the same masked-and-quantized update.

Flower 1.41's SecAgg+ client quantizes each update with *stochastic* rounding drawn from NumPy's global
generator (``flwr.common.secure_aggregation.quantization``), which nothing seeds. Two runs of the same
configuration therefore sent different integers and, the integer sum being exact, ended with different models:
``make run`` at seed 0 read test HR@10 0.4369-0.4517 across runs.

The rounding is not a privacy mechanism (the DP noise is added before it, from its own generator; the masks
come from Flower's key agreement), so drawing it from the run's seed costs nothing. With ``secure-rng`` the
rounding is left to NumPy's OS-seeded global state, like the DP noise. The global state is restored
afterwards, so nothing else in the process sees a changed generator.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from shared.config import RunConfig

ROUNDING_STREAM = 0x5EC466  # keeps this stream apart from every other seed derived from the run seed


def rounding_seed(config: RunConfig, store: int, server_round: int) -> np.random.SeedSequence | None:
    """The seed of one store's SecAgg+ messages in one round; None with ``secure-rng`` (OS entropy)."""
    if config.secure_rng:
        return None
    return np.random.SeedSequence([config.seed, ROUNDING_STREAM, store, server_round])


@contextmanager
def seeded_global_numpy(seed: np.random.SeedSequence | int | None) -> Iterator[None]:
    """Run the block with NumPy's global (legacy) generator seeded from ``seed``, then restore it; None
    leaves the generator as it is."""
    if seed is None:
        yield
        return
    saved = np.random.get_state()
    np.random.seed(seed.generate_state(4) if isinstance(seed, np.random.SeedSequence) else seed)
    try:
        yield
    finally:
        np.random.set_state(saved)
