"""Attacks an auditor runs against fedrec's own outputs; pure functions of arrays, testable on known answers.

- **Membership inference** (loss/score threshold, Yeom et al., CSF 2018; no shadow models): the attacker
  scores (user, item) pairs with a model and thresholds the score. Its power over every threshold is the ROC
  AUC of members' scores against non-members' scores (0.5 = chance).
- **Item-set inference** from one client's update of the shared parameters: the per-item rows (item bias of
  the text tower, item embeddings of the id tower) move only for items the client's users trained on — the
  positives *up* (item bias) and the sampled negatives down — so "which rows moved up" reveals the item set
  unless noise (DP) or masking (SecAgg+) hides it. Reported as precision/recall against the true set, beside
  chance (the set's share of the catalog).
- **The SecAgg+ view**: what the server receives from one store under SecAgg+ is the quantized update plus
  pseudo-random masks modulo 2^32 (Bonawitz et al., CCS 2017; Flower's ``secaggplus_mod``); ``masked_update``
  reproduces it with Flower's own quantization and mask generator so the attack can be run on it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from client.secagg_rounding import seeded_global_numpy
from shared import secagg_masks

BIAS_SUFFIX = "item_bias.weight"  # text tower: one signed value per item
EMBEDDING_SUFFIX = "_item.weight"  # id/hybrid towers: one row per item
SECAGG_SEED_BYTES = 32


# -- membership inference -----------------------------------------------------------------------------------


def membership_auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """P(score of a random member > score of a random non-member), ties counting one half (Mann–Whitney U).

    This is the threshold attack's ROC AUC: an attacker who may pick any threshold does no better than it.
    """
    members = np.asarray(member_scores, dtype=np.float64).ravel()
    nonmembers = np.asarray(nonmember_scores, dtype=np.float64).ravel()
    if members.size == 0 or nonmembers.size == 0:
        raise ValueError("membership_auc needs at least one member and one non-member score")
    scores = np.concatenate([members, nonmembers])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(scores.size, dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks of ties (1-based), so equal scores count 1/2
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [scores.size]))
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    u = ranks[: members.size].sum() - members.size * (members.size + 1) / 2.0
    return float(u / (members.size * nonmembers.size))


def membership_pairs(
    train_indptr: np.ndarray,
    train_items: np.ndarray,
    interacted: list[set[int]],
    popularity: np.ndarray,
    users: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Balanced (user, member item, non-member item) triples, popularity-matched.

    Member: one of the user's train interactions, uniformly. Non-member: the item closest in ``popularity``
    (train interaction count) to the member among the items the user never interacted with (``interacted[u]``:
    train, validation and test items); the nearer neighbour on either side, ties broken at random. Members and
    non-members then have (nearly) the same popularity, so an attack that only knows popularity sits at
    AUC ≈ 0.5. Random catalog items (mostly unpopular), random other interactions (a heavy user has already
    touched most popular items, so what is left is unpopular) or the user's later test item (popularity drifts
    over time) would let popularity alone "detect membership". Users without a train interaction are skipped.
    """
    order = np.argsort(popularity, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    chosen_users, members, nonmembers = [], [], []
    for u in np.asarray(users, dtype=np.int64):
        start, end = int(train_indptr[u]), int(train_indptr[u + 1])
        if end == start or len(interacted[u]) >= order.size:
            continue
        member = int(train_items[start + int(rng.integers(end - start))])
        match = _nearest_unseen(order, int(rank[member]), interacted[u], popularity, rng)
        chosen_users.append(u)
        members.append(member)
        nonmembers.append(match)
    return (
        np.asarray(chosen_users, np.int64),
        np.asarray(members, np.int64),
        np.asarray(nonmembers, np.int64),
    )


def _nearest_unseen(
    order: np.ndarray, position: int, seen: set[int], popularity: np.ndarray, rng: np.random.Generator
) -> int:
    """The item nearest in popularity rank to ``order[position]`` that is not in ``seen``."""
    target = popularity[order[position]]
    left, right = position - 1, position + 1
    while True:
        while left >= 0 and int(order[left]) in seen:
            left -= 1
        while right < order.size and int(order[right]) in seen:
            right += 1
        candidates = [int(order[i]) for i in (left, right) if 0 <= i < order.size]
        if not candidates:
            raise ValueError("no unseen item to match")
        gaps = [abs(float(popularity[c]) - float(target)) for c in candidates]
        best = [c for c, g in zip(candidates, gaps, strict=True) if g == min(gaps)]
        return best[int(rng.integers(len(best)))]


# -- item-set inference -------------------------------------------------------------------------------------


def item_signal(update: Mapping[str, np.ndarray], n_items: int) -> np.ndarray:
    """Per-item evidence that a client's users trained on the item, from an update of the shared parameters.

    The item bias (text tower) moves up for a positive and down for a negative, so its signed change is the
    evidence; item embedding rows (id/hybrid towers) carry no sign, so their L2 row norm is. Per-item tables
    are recognised by name and shape (``n_items`` rows); everything else in the update is ignored.
    """
    signal = np.zeros(n_items, dtype=np.float64)
    found = False
    for name, array in update.items():
        array = np.asarray(array, dtype=np.float64)
        if array.ndim != 2 or array.shape[0] != n_items:
            continue
        if name.endswith(BIAS_SUFFIX):
            signal += array[:, 0]
            found = True
        elif name.endswith(EMBEDDING_SUFFIX):
            signal += np.linalg.norm(array, axis=1)
            found = True
    if not found:
        raise ValueError(
            f"the update has no per-item table with {n_items} rows (item bias or item embeddings)"
        )
    return signal


def item_set_metrics(
    signal: np.ndarray, true_items: Sequence[int] | np.ndarray, threshold: float = 0.0
) -> dict[str, float]:
    """Precision/recall of two guesses against the true item set, with chance for comparison.

    - ``moved`` guess: items whose signal is above ``threshold`` (0: "the row moved up") — needs no knowledge;
    - ``top`` guess: the ``|true set|`` items of largest signal (an attacker who knows the set size; its
      precision equals its recall).
    ``chance`` is the precision of a uniformly random guess (the set's share of the catalog); ``auc`` ranks
    true items against the others by signal.
    """
    signal = np.asarray(signal, dtype=np.float64)
    truth = np.zeros(signal.size, dtype=bool)
    truth[np.asarray(true_items, dtype=np.int64)] = True
    size = int(truth.sum())
    if size == 0 or size == signal.size:
        raise ValueError("the true item set must be non-empty and smaller than the catalog")
    moved = signal > threshold
    hits = int((moved & truth).sum())
    top = np.argsort(-signal, kind="stable")[:size]
    return {
        "precision": hits / int(moved.sum()) if moved.any() else 0.0,
        "recall": hits / size,
        "top_precision": float(truth[top].mean()),
        "chance": size / signal.size,
        "auc": membership_auc(signal[truth], signal[~truth]),
        "set_size": float(size),
    }


# -- what the server sees under SecAgg+ --------------------------------------------------------------------


def masked_update(
    arrays: Sequence[np.ndarray],
    clipping_range: float,
    quantization_range: int,
    modulus_range: int,
    rng: np.random.Generator,
    neighbours: int = 2,
) -> list[np.ndarray]:
    """One store's SecAgg+ message as the server receives it: the update quantized within ±clipping_range to
    ``quantization_range`` levels (Flower's ``quantize``), plus the store's private mask and one pairwise mask
    per neighbour (the masks fedrec installs into Flower's SecAgg+, shared/secagg_masks.py, from random
    seeds), modulo ``modulus_range``.

    The seeds are fresh random bytes, as the key agreement makes them for the server: without ``threshold``
    colluding stores' shares the server cannot remove the masks, so each coordinate is uniform on
    [0, modulus_range) whatever the update.
    """
    from flwr.common.secure_aggregation.quantization import quantize

    with seeded_global_numpy(int(rng.integers(2**32))):  # Flower rounds with NumPy's global generator
        quantized = quantize(list(arrays), clipping_range, quantization_range)
    shapes = [a.shape for a in quantized]
    masked = [q.astype(np.int64) for q in quantized]
    for _ in range(1 + neighbours):
        seed = rng.bytes(SECAGG_SEED_BYTES)
        for i, mask in enumerate(secagg_masks.pseudo_rand_gen(seed, modulus_range, shapes)):
            masked[i] = (masked[i] + mask.astype(np.int64)) % modulus_range
    return masked
