"""Privacy parameters both sides must agree on, derived once from the run config.

The server (federation ledger, budget stop) and every store (its own ledger, its noise share) call these same
functions, so they can never disagree on σ or on how the noise is split.
"""

from __future__ import annotations

import functools

from shared.config import RunConfig
from shared.ledger import noise_for_target


def noise_shares(config: RunConfig) -> int:
    """K: how many stores' noise shares make up the full noise. Without SecAgg+ a store's update is seen
    alone, so it must carry all of it (K = 1)."""
    return config.noise_share_stores if config.secagg else 1


@functools.lru_cache(maxsize=32)
def _calibrated(target: float, delta: float, sample_rate: float, steps: int) -> float:
    return noise_for_target(target, delta, sample_rate, steps)


def federation_noise_multiplier(config: RunConfig) -> float:
    """σ of user-level DP-FedAvg: given, or calibrated so ``num-rounds`` rounds spend ``target-epsilon``."""
    if not config.sigma_from_target:
        return config.noise_multiplier
    return _calibrated(config.target_epsilon, config.delta, config.user_sample_rate, config.num_rounds)
