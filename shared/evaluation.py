"""Evaluate a model on its own users (PROTOCOL.md): sampled and full ranking, as sums and counts.

A store calls this on its local users with the current global shared parameters and its private embeddings;
the centralized baseline calls it on everyone. Both use the same function, so their numbers compare honestly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch

from shared.metrics import USERS_KEY, add_sums, full_metric_sums, sampled_metric_sums
from shared.split import Split

EVAL_BATCH_USERS = 256
HeldOut = Literal["valid", "test"]


def held_out_items(split: Split, which: HeldOut) -> np.ndarray:
    return split.valid_items if which == "valid" else split.test_items


def exclusion_mask(split: Split, users: np.ndarray, which: HeldOut) -> torch.Tensor:
    """Items not ranked for each user: train items, plus the validation item when ranking the test item."""
    mask = torch.zeros((len(users), split.n_items), dtype=torch.bool)
    starts, ends = split.train_indptr[users], split.train_indptr[users + 1]
    lengths = ends - starts
    rows = np.repeat(np.arange(len(users)), lengths)
    cols = split.train_items[np.concatenate([np.arange(s, e) for s, e in zip(starts, ends, strict=True)])] \
        if len(users) else np.zeros(0, dtype=np.int64)
    mask[torch.as_tensor(rows), torch.as_tensor(cols)] = True
    if which == "test":
        mask[torch.arange(len(users)), torch.as_tensor(split.valid_items[users])] = True
    return mask


def evaluate(score_all_items: Callable[[torch.Tensor], torch.Tensor], split: Split, negatives: np.ndarray,
             which: HeldOut, k: int, device: torch.device | None = None
             ) -> tuple[dict[str, float], list[np.ndarray]]:
    """Summed metrics over the split's evaluable users, and their full-ranking top-k lists.

    ``score_all_items(users)`` gives [len(users), n_items] scores (e.g. ``NeuMF.score_all_items``, eval mode).

    ``negatives[u]`` are user ``u``'s sampled candidates (PROTOCOL.md); users without a held-out item are
    skipped.
    """
    return evaluate_held_out(score_all_items, split, negatives, (which,), k, device)[which]


@torch.no_grad()
def evaluate_held_out(score_all_items: Callable[[torch.Tensor], torch.Tensor], split: Split,
                      negatives: np.ndarray, which: tuple[HeldOut, ...], k: int,
                      device: torch.device | None = None
                      ) -> dict[str, tuple[dict[str, float], list[np.ndarray]]]:
    """``evaluate`` for several held-out items (validation and test) from one scoring pass: the scores of a
    user do not depend on which item is held out, and scoring every item is the expensive part."""
    device = device or torch.device("cpu")
    users = np.flatnonzero(held_out_items(split, which[0]) >= 0)
    out: dict[str, tuple[dict[str, float], list[np.ndarray]]] = {}
    for name in which:
        if not np.array_equal(np.flatnonzero(held_out_items(split, name) >= 0), users):
            raise ValueError("validation and test items must be held out for the same users")
        out[name] = ({USERS_KEY: float(len(users))}, [])
    for start in range(0, len(users), EVAL_BATCH_USERS):
        batch = users[start:start + EVAL_BATCH_USERS]
        scores = score_all_items(torch.as_tensor(batch, device=device)).float()
        rows = torch.arange(len(batch), device=device)
        neg = torch.as_tensor(negatives[batch], device=device)
        negative_scores = scores.gather(1, neg)
        for name in which:
            sums, tops = out[name]
            positive_items = torch.as_tensor(held_out_items(split, name)[batch], device=device)
            add_sums(sums, sampled_metric_sums(scores[rows, positive_items], negative_scores, k))
            excluded = exclusion_mask(split, batch, name).to(device)
            full, top = full_metric_sums(scores, positive_items, excluded, k)
            add_sums(sums, full)
            tops.append(top.cpu().numpy())
    return out
