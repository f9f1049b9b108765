"""The one source of DP noise randomness shared by every privacy mode."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from client.trainers import dp_noise_generator
from shared.config import RunConfig


def _draw(config: RunConfig) -> torch.Tensor:
    generator = dp_noise_generator(config, np.random.default_rng(7))
    return torch.randn(4, generator=generator)


def test_noise_is_reproducible_from_the_run_seed_without_secure_rng(make_config: Callable[..., RunConfig]
                                                                   ) -> None:
    config = make_config(secure_rng=False)
    assert torch.equal(_draw(config), _draw(config))


def test_secure_rng_draws_noise_the_run_seed_cannot_reproduce(make_config: Callable[..., RunConfig]) -> None:
    config = make_config(secure_rng=True)
    assert not torch.equal(_draw(config), _draw(config))


def test_the_generator_lives_on_the_requested_device(make_config: Callable[..., RunConfig]) -> None:
    generator = dp_noise_generator(make_config(), np.random.default_rng(0), torch.device("cpu"))
    assert generator.device.type == "cpu"
