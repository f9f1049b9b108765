"""NeuMF and the one declaration of which of its parameters are private.

NeuMF (He et al., "Neural Collaborative Filtering", WWW 2017): a GMF tower (element-wise product of user and
item embeddings) and an MLP tower (MLP over the concatenated embeddings), fused by one linear output layer.

Privacy split (fedrec's design): the user embeddings are **private** — created, trained and stored only at the
store that holds the user, never put in a Flower message. Everything else (item embeddings, MLP, output layer)
is **shared**: the part stores train together and the server aggregates. ``PRIVATE_PARAMETERS`` is the only
place this split is declared; every other module asks ``is_private``/``shared_names``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from shared.config import RunConfig

PRIVATE_PARAMETERS = ("gmf_user.weight", "mlp_user.weight")
EMBEDDING_INIT_STD = 0.01  # NCF's reference initialisation N(0, 0.01)


@dataclass(frozen=True)
class ModelShape:
    n_items: int
    gmf_dim: int
    mlp_dim: int
    hidden: tuple[int, ...]

    @classmethod
    def from_config(cls, config: RunConfig, n_items: int) -> ModelShape:
        return cls(n_items=n_items, gmf_dim=config.gmf_dim, mlp_dim=config.mlp_dim,
                   hidden=config.hidden_layers)


class NeuMF(nn.Module):
    """NeuMF over ``n_users`` local users; the item side is the whole catalog."""

    def __init__(self, n_users: int, shape: ModelShape) -> None:
        super().__init__()
        self.shape = shape
        self.gmf_user = nn.Embedding(n_users, shape.gmf_dim)
        self.mlp_user = nn.Embedding(n_users, shape.mlp_dim)
        self.gmf_item = nn.Embedding(shape.n_items, shape.gmf_dim)
        self.mlp_item = nn.Embedding(shape.n_items, shape.mlp_dim)
        layers: list[nn.Module] = []
        width = 2 * shape.mlp_dim
        for size in shape.hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.mlp = nn.Sequential(*layers)
        self.out = nn.Linear(shape.gmf_dim + width, 1)
        for emb in (self.gmf_user, self.mlp_user, self.gmf_item, self.mlp_item):
            nn.init.normal_(emb.weight, std=EMBEDDING_INIT_STD)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits for (user, item) pairs; ``users`` and ``items`` broadcast against each other."""
        users, items = torch.broadcast_tensors(users, items)
        gmf = self.gmf_user(users) * self.gmf_item(items)
        mlp_in = torch.cat([self.mlp_user(users), self.mlp_item(items)], dim=-1)
        fused = torch.cat([gmf, self.mlp(mlp_in)], dim=-1)
        return self.out(fused).squeeze(-1)

    @torch.no_grad()
    def score_all_items(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of every catalog item for a batch of users: [len(users), n_items]."""
        items = torch.arange(self.shape.n_items, device=users.device)
        return self(users[:, None], items[None, :])


def is_private(name: str) -> bool:
    return name in PRIVATE_PARAMETERS


def shared_names(model: nn.Module) -> list[str]:
    """Names of the shared parameters, in the fixed order they travel in Flower messages."""
    return [name for name, _ in model.named_parameters() if not is_private(name)]


def shared_state(model: nn.Module) -> OrderedDict[str, torch.Tensor]:
    return OrderedDict((n, p.detach()) for n, p in model.named_parameters() if not is_private(n))


def get_shared(model: nn.Module) -> list[np.ndarray]:
    """The shared parameters as NumPy arrays (what a Flower message may carry)."""
    return [p.detach().cpu().numpy().copy() for p in shared_state(model).values()]


def set_shared(model: nn.Module, arrays: list[np.ndarray]) -> None:
    """Load shared parameters (in ``shared_names`` order) into ``model``; private ones are untouched."""
    names = shared_names(model)
    if len(arrays) != len(names):
        raise ValueError(f"expected {len(names)} shared arrays ({', '.join(names)}), got {len(arrays)}")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, array in zip(names, arrays, strict=True):
            target = params[name]
            if tuple(array.shape) != tuple(target.shape):
                raise ValueError(f"shared parameter {name}: shape {array.shape} != {tuple(target.shape)}")
            target.copy_(torch.as_tensor(array, dtype=target.dtype))


def initial_shared(shape: ModelShape, seed: int) -> list[np.ndarray]:
    """The round-0 shared parameters: a deterministic function of the shape and the seed."""
    torch.manual_seed(seed)
    return get_shared(NeuMF(1, shape))


def shared_shapes(shape: ModelShape) -> list[tuple[int, ...]]:
    return [tuple(a.shape) for a in initial_shared(shape, 0)]


def private_shapes(n_users: int, shape: ModelShape) -> list[tuple[int, ...]]:
    """Shapes a private tensor of a store with ``n_users`` users would have (used to police messages)."""
    return [(n_users, shape.gmf_dim), (n_users, shape.mlp_dim)]
