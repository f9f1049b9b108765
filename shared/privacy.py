"""Privacy parameters both sides must agree on, derived once from the run config.

The server (federation ledger, budget stop) and every store (its own ledger, its noise share) call these same
functions, so they can never disagree on σ or on how the noise is split.
"""

from __future__ import annotations

import contextlib
import functools
import json

import numpy as np

from shared.atomic import write_json_atomic
from shared.config import RunConfig
from shared.datasets import data_root
from shared.ledger import noise_for_target


def noise_shares(config: RunConfig) -> int:
    """K: how many stores' noise shares make up the full noise. Without SecAgg+ a store's update is seen
    alone, so it must carry all of it (K = 1)."""
    return config.noise_share_stores if config.secagg else 1


CALIBRATION_CACHE = "noise-calibration.json"


@functools.lru_cache(maxsize=32)
def _calibrated(target: float, delta: float, sample_rate: float, steps: int) -> float:
    """Opacus' binary search costs seconds (RDP at ~150 orders per candidate σ); it is a pure function of its
    arguments, so its result is also kept on disk and later runs start at once."""
    path = data_root() / CALIBRATION_CACHE
    key = json.dumps([target, delta, sample_rate, steps])
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return float(cache[key])
    sigma = noise_for_target(target, delta, sample_rate, steps)
    cache[key] = sigma
    with contextlib.suppress(OSError):  # a read-only data directory only costs the next run the search again
        write_json_atomic(path, cache)
    return sigma


def federation_noise_multiplier(config: RunConfig) -> float:
    """σ of user-level DP-FedAvg: given, or calibrated so ``num-rounds`` rounds spend ``target-epsilon``."""
    if not config.sigma_from_target:
        return config.noise_multiplier
    return _calibrated(config.target_epsilon, config.delta, config.user_sample_rate, config.num_rounds)


def user_level_estimate(noised_sum: list[np.ndarray], config: RunConfig, population: int) -> list[np.ndarray]:
    """The DP-FedAvg step direction Σ/(q·N): the denominator is fixed, not the number of users who happened
    to be sampled, because the sensitivity analysis (one user moves Σ by at most C) assumes it."""
    denominator = config.user_sample_rate * population
    return [part / denominator for part in noised_sum]
