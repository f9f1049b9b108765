"""Maximal Marginal Relevance (Carbonell & Goldstein, SIGIR 1998) to diversify a ranked candidate list.

Each step picks ``argmax λ·relevance − (1 − λ)·max similarity to the items already picked``. Relevance is the
NeuMF logit min-max scaled to [0, 1] over the candidates, so that ``λ`` trades off quantities on the same
scale; similarity is the cosine of the items' unit [GMF | MLP] vectors. The request's ``diversity`` is
``1 − λ``: 0 keeps the relevance order, 1 picks by dissimilarity alone (after the most relevant item).
"""

from __future__ import annotations

import numpy as np


def scaled(scores: np.ndarray) -> np.ndarray:
    spread = float(scores.max() - scores.min()) if len(scores) else 0.0
    return (scores - scores.min()) / spread if spread > 0 else np.ones_like(scores)


def mmr(relevance: np.ndarray, unit_vectors: np.ndarray, k: int, diversity: float) -> np.ndarray:
    """Positions (into ``relevance``) of ``k`` picks in MMR order; ``diversity`` in [0, 1]."""
    count = min(k, len(relevance))
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    weight = 1.0 - diversity
    gain = weight * scaled(relevance.astype(np.float64))
    similarity = unit_vectors @ unit_vectors.T
    picked = [int(np.argmax(gain))]
    closest = similarity[picked[0]].astype(np.float64)
    available = np.ones(len(relevance), dtype=bool)
    available[picked[0]] = False
    while len(picked) < count:
        value = np.where(available, gain - diversity * closest, -np.inf)
        best = int(np.argmax(value))
        picked.append(best)
        available[best] = False
        closest = np.maximum(closest, similarity[best])
    return np.asarray(picked, dtype=np.int64)
