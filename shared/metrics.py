"""Ranking metrics of PROTOCOL.md, as sums and counts so stores can evaluate their own users.

Every metric here is a per-user value summed over users; a federation adds the sums and the counts it receives
and divides once, which equals a central evaluation of the same users (``mean_metrics``). Ranks are
pessimistic: an item scoring the same as the held-out item counts as ranked above it, so a constant model
scores no better than chance.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch

USERS_KEY = "users"
RECALL_AT = 20


def pessimistic_rank(positive: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """0-based rank of each row's positive among ``others`` (same row), ties counting against it."""
    return _rank(*_broken_scores_lose(positive, others))


def _rank(positive: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    return (others >= positive[:, None]).sum(dim=1)


def _broken_scores_lose(positive: torch.Tensor, others: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A non-finite positive ranks last and a NaN competitor ranks above it.

    ``x >= NaN`` is false, so a model whose logits overflowed to NaN would otherwise rank every positive
    first and score a perfect HR: a diverged private run once read 0.87 sampled HR@10 that way.
    """
    positive = torch.where(torch.isfinite(positive), positive, torch.full_like(positive, float("-inf")))
    others = torch.where(torch.isnan(others), torch.full_like(others, float("inf")), others)
    return positive, others


def sampled_metric_sums(positive: torch.Tensor, negatives: torch.Tensor, k: int) -> dict[str, float]:
    """HR@k, NDCG@k and AUC over 1 positive + sampled negatives per user (summed over users)."""
    positive, negatives = _broken_scores_lose(positive, negatives)  # once, for the rank and the AUC
    rank = _rank(positive, negatives).double()
    hit = (rank < k).double()
    return {
        f"hr@{k}": hit.sum().item(),
        f"ndcg@{k}": (hit / torch.log2(rank + 2)).sum().item(),
        "auc": (negatives < positive[:, None]).double().mean(dim=1).sum().item(),
    }


def full_metric_sums(scores: torch.Tensor, held_out: torch.Tensor, excluded: torch.Tensor, k: int
                     ) -> tuple[dict[str, float], torch.Tensor]:
    """Full-ranking metrics: the held-out item against every item not in ``excluded`` (a bool mask).

    Returns the sums and each user's top-k items (for catalog coverage).
    """
    rows = torch.arange(scores.shape[0], device=scores.device)
    masked = scores.masked_fill(excluded, float("-inf"))
    positive = masked[rows, held_out]
    masked_without_positive = masked.clone()
    masked_without_positive[rows, held_out] = float("-inf")
    rank = pessimistic_rank(positive, masked_without_positive).double()
    hit = (rank < k).double()
    top = torch.topk(masked, k=min(k, masked.shape[1]), dim=1).indices
    sums = {
        f"hr@{k}_full": hit.sum().item(),
        f"ndcg@{k}_full": (hit / torch.log2(rank + 2)).sum().item(),
        f"recall@{RECALL_AT}_full": (rank < RECALL_AT).double().sum().item(),
        f"precision@{k}_full": (hit / k).sum().item(),
    }
    return sums, top


def add_sums(total: dict[str, float], part: Mapping[str, float]) -> dict[str, float]:
    for key, value in part.items():
        total[key] = total.get(key, 0.0) + float(value)
    return total


def mean_metrics(sums: Mapping[str, float]) -> dict[str, float]:
    """Divide summed metrics by the summed user count; ``users`` is kept as the count."""
    count = sums.get(USERS_KEY, 0.0)
    if count <= 0:
        return {USERS_KEY: 0.0}
    return {key: (value if key == USERS_KEY else value / count) for key, value in sums.items()}


def catalog_coverage(top_items: Iterable[np.ndarray], n_items: int) -> float:
    """Share of the catalog appearing in at least one user's full-ranking top-k."""
    seen = np.zeros(n_items, dtype=bool)
    for block in top_items:
        seen[np.asarray(block).ravel()] = True
    return float(seen.mean())
