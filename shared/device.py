"""Where torch runs: CUDA when present (and asked for), CPU otherwise. Chosen here and nowhere else."""

from __future__ import annotations

import torch

from shared.config import ConfigError, RunConfig


def pick_device(config: RunConfig) -> torch.device:
    """The training device; also pins torch's CPU thread count (1 per process was fastest on 2 cores)."""
    torch.set_num_threads(config.torch_threads)
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' requested but torch sees no CUDA device")
    if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")
