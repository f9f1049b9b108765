"""The cold-start evaluation protocol (docs/cold_start.md): held-out items and users, metrics, baselines.

Items: 10 % of the catalog is held out with all its interactions; the model never sees those items (they are
not even negatives). For each warm user who interacted with a held-out item, the held-out items are ranked
(Recall@10, AUC; HR@10 only beside random, since with ~170 candidates and many positives per user it is
inflated). For each held-out item, the warm users are ranked (AUC), beside the strong users-by-activity
baseline. Users: 10 % of users are held out with all their interactions; each is served after 1, 3 and 5 of
their first (chronological) clicks, and their last interaction is the test item (PROTOCOL.md's candidates:
99 sampled unseen items, plus full ranking over warm items).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from shared.data import Dataset
from shared.split import leave_one_out, sampled_negatives, tie_break_key
from shared.workload import NUM_EVAL_NEGATIVES, Workload

K = 10
YEAR = re.compile(r"\((\d{4})\)\s*$")
DECADE = 10
UNKNOWN_DECADE = -1
TIE_BREAK = 1e-6  # far below any real score difference of the category baselines


@dataclass(frozen=True)
class ColdHoldout:
    """Original-index bookkeeping of one held-out draw; ``warm`` is the training data, re-indexed."""

    full: Dataset
    warm: Workload
    warm_items: np.ndarray  # original item index of each warm item (= its index in ``warm``)
    warm_users: np.ndarray  # original user index of each warm user
    cold_items: np.ndarray
    cold_users: np.ndarray


def hold_out(dataset: Dataset, seed: int, item_share: float, user_share: float, eval_seed: int,
             num_negatives: int = NUM_EVAL_NEGATIVES) -> ColdHoldout:
    """Hold out ``item_share`` of the items and ``user_share`` of the users, with all their interactions."""
    rng = np.random.default_rng(seed)
    cold_items = np.sort(rng.choice(dataset.n_items, round(item_share * dataset.n_items), replace=False))
    cold_users = np.sort(rng.choice(dataset.n_users, round(user_share * dataset.n_users), replace=False))
    keep = ~np.isin(dataset.items, cold_items) & ~np.isin(dataset.users, cold_users)
    warm_items = np.setdiff1d(np.arange(dataset.n_items), cold_items)
    warm_users = np.unique(dataset.users[keep])
    item_index = np.full(dataset.n_items, -1)
    item_index[warm_items] = np.arange(len(warm_items))
    user_index = np.full(dataset.n_users, -1)
    user_index[warm_users] = np.arange(len(warm_users))
    warm = Dataset(
        user_ids=tuple(dataset.user_ids[u] for u in warm_users),
        item_ids=tuple(dataset.item_ids[i] for i in warm_items),
        users=user_index[dataset.users[keep]], items=item_index[dataset.items[keep]],
        timestamps=dataset.timestamps[keep],
        ratings=None if dataset.ratings is None else dataset.ratings[keep],
        titles=tuple(dataset.titles[i] for i in warm_items),
        texts=tuple(dataset.texts[i] for i in warm_items),
        categories=tuple(dataset.categories[i] for i in warm_items),
        user_stores=None if dataset.user_stores is None
        else tuple(dataset.user_stores[u] for u in warm_users),
        source=f"{dataset.source} (cold-start hold-out, seed {seed})")
    split = leave_one_out(warm)
    workload = Workload(warm, split, sampled_negatives(split, eval_seed, num_negatives))
    return ColdHoldout(dataset, workload, warm_items, warm_users, cold_items, cold_users)


HALF_SEED_OFFSET = 1000  # the halves' draw is independent of the hold-out's own draw (same seed)


def validation_test_halves(n_cold: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices of the cold items split in two random halves: settings of the new-item mapping are
    chosen on the first (validation) and reported on the second (test), as PROTOCOL.md does for users."""
    order = np.random.default_rng(seed + HALF_SEED_OFFSET).permutation(n_cold)
    return np.sort(order[:n_cold // 2]), np.sort(order[n_cold // 2:])


def interaction_matrix(dataset: Dataset, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """bool [len(users), len(items)]: who interacted with what (any time) in the full data."""
    user_pos = np.full(dataset.n_users, -1)
    user_pos[users] = np.arange(len(users))
    item_pos = np.full(dataset.n_items, -1)
    item_pos[items] = np.arange(len(items))
    rows, cols = user_pos[dataset.users], item_pos[dataset.items]
    both = (rows >= 0) & (cols >= 0)
    out = np.zeros((len(users), len(items)), dtype=bool)
    out[rows[both], cols[both]] = True
    return out


def _pessimistic_order(scores: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """Column order by descending score, positives after negatives of equal score (ties count against)."""
    return np.lexsort((positives, -scores), axis=-1)


def rank_metrics(scores: np.ndarray, positives: np.ndarray, k: int = K) -> dict[str, float]:
    """Mean over rows with ≥ 1 positive and ≥ 1 negative: Recall@k (hits / min(k, positives), Liang et al.,
    "Variational Autoencoders for Collaborative Filtering", WWW 2018), HR@k and AUC with pessimistic ties."""
    rows = np.flatnonzero(positives.any(1) & (~positives).any(1))
    recall, hit, auc = [], [], []
    for r in rows:
        s, p = scores[r], positives[r]
        top = _pessimistic_order(s, p)[:k]
        hits = int(p[top].sum())
        recall.append(hits / min(k, int(p.sum())))
        hit.append(float(hits > 0))
        neg = np.sort(s[~p])
        below = np.searchsorted(neg, s[p], side="left")  # negatives strictly below each positive
        auc.append(float(below.mean()) / len(neg))
    return {f"recall@{k}": float(np.mean(recall)), f"hr@{k}": float(np.mean(hit)), "auc": float(np.mean(auc)),
            "rows": float(len(rows))}


def release_decade(title: str) -> int:
    match = YEAR.search(title)
    return int(match.group(1)) // DECADE * DECADE if match else UNKNOWN_DECADE


def category_year_features(dataset: Dataset) -> np.ndarray:
    """One-hot categories + one-hot release decade of every item: the text's structured part only."""
    categories = sorted({c for cs in dataset.categories for c in cs})
    decades = sorted({release_decade(t) for t in dataset.titles})
    out = np.zeros((dataset.n_items, len(categories) + len(decades)), dtype=np.float32)
    for i in range(dataset.n_items):
        for c in dataset.categories[i]:
            out[i, categories.index(c)] = 1.0
        out[i, len(categories) + decades.index(release_decade(dataset.titles[i]))] = 1.0
    return out


def text_without_title(dataset: Dataset, i: int) -> str:
    """An item's text with the title replaced by its year: what MiniLM sees if it cannot recognise a film."""
    decade_year = YEAR.search(dataset.titles[i])
    year = decade_year.group(1) if decade_year else "unknown year"
    return f"A film from {year}. Categories: {', '.join(dataset.categories[i])}"


def category_matrix(dataset: Dataset) -> tuple[np.ndarray, list[str]]:
    names = sorted({c for cs in dataset.categories for c in cs})
    out = np.zeros((dataset.n_items, len(names)), dtype=np.float32)
    for i, cs in enumerate(dataset.categories):
        for c in cs:
            out[i, names.index(c)] = 1.0
    return out, names


def category_baselines(holdout: ColdHoldout, eval_users: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Scores [len(eval_users), n_cold] of category popularity and the user's category affinity.

    Category popularity: mean training interactions per warm item of each of the item's categories (same for
    every user). Affinity: the sum, over the item's categories, of the user's share of training interactions
    in that category (the user's category distribution · the item's category indicator); of the variants
    tried (mean instead of sum: Recall@10 0.09; lift over the global share: 0.15) the sum was the strongest
    (0.22), so it is the baseline. Ties broken by category popularity. Remaining ties (hundreds of items
    share a category set, e.g. "Drama") are broken at random: pessimistic ties would rank every positive
    last among its equals and punish the baseline below random for the tie, not for its idea.
    """
    cats, _ = category_matrix(holdout.full)
    split = holdout.warm.split
    train_items_orig = holdout.warm_items[split.train_items]
    per_item = np.bincount(train_items_orig, minlength=holdout.full.n_items).astype(np.float64)
    warm_cats = cats[holdout.warm_items]
    category_pop = (per_item[holdout.warm_items] @ warm_cats) / np.maximum(warm_cats.sum(0), 1)
    cold_cats = cats[holdout.cold_items]
    n_cats = np.maximum(cold_cats.sum(1), 1)
    popularity = (cold_cats @ category_pop) / n_cats
    user_counts = np.zeros((split.n_users, cats.shape[1]))
    np.add.at(user_counts, split.train_users, cats[train_items_orig])
    affinity = user_counts / np.maximum(np.bincount(split.train_users, minlength=split.n_users), 1)[:, None]
    user_affinity = affinity[eval_users] @ cold_cats.T
    jitter = np.random.default_rng(seed).random((len(eval_users), len(holdout.cold_items))) * TIE_BREAK
    tie_break = popularity / (popularity.max() or 1.0) * TIE_BREAK
    return {"category popularity": np.tile(popularity, (len(eval_users), 1)) + jitter,
            "user's category affinity": user_affinity + tie_break + TIE_BREAK * jitter}


@dataclass(frozen=True)
class ColdUser:
    """A held-out user's warm-item history in click order; the last is the test, the one before validation."""

    user: int  # original index
    history: np.ndarray  # warm-item indices (model indexing), chronological, hash tie-break


def cold_user_histories(holdout: ColdHoldout, min_clicks: int) -> list[ColdUser]:
    """Held-out users with at least ``min_clicks`` + 2 warm-item interactions, in PROTOCOL.md's order."""
    full = holdout.full
    warm_pos = np.full(full.n_items, -1)
    warm_pos[holdout.warm_items] = np.arange(len(holdout.warm_items))
    out = []
    for u in holdout.cold_users:
        rows = np.flatnonzero((full.users == u) & (warm_pos[full.items] >= 0))
        keys = [tie_break_key(full.user_ids[u], full.item_ids[full.items[r]]) for r in rows]
        order = np.lexsort((np.array(keys, dtype=np.uint64), full.timestamps[rows]))
        history = warm_pos[full.items[rows[order]]]
        if len(history) >= min_clicks + 2:
            out.append(ColdUser(int(u), history))
    return out


def held_out_candidates(user: ColdUser, n_items: int, eval_seed: int, which: int) -> np.ndarray:
    """The held-out item (``which`` = -1 test, -2 validation) then 99 items the user never interacted with."""
    rng = np.random.default_rng([eval_seed, user.user])
    unseen = np.setdiff1d(np.arange(n_items), user.history)
    return np.concatenate([[user.history[which]], rng.choice(unseen, NUM_EVAL_NEGATIVES, replace=False)])


def hit_at_k(scores: np.ndarray, target: int, excluded: np.ndarray, candidates: np.ndarray,
             k: int = K) -> tuple[float, float]:
    """(sampled HR@k among ``candidates`` (target first), full HR@k over the catalog minus ``excluded``);
    ties count against the target."""
    sampled = float((scores[candidates[1:]] >= scores[target]).sum() < k)
    others = np.ones(len(scores), dtype=bool)
    others[excluded] = False
    others[target] = False
    full = float((scores[others] >= scores[target]).sum() < k)
    return sampled, full
