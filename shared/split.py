"""Leave-one-out split and evaluation candidates, exactly as /PROTOCOL.md prescribes.

Every accuracy number (federated, private, centralized) must be computed on the same split and the same
sampled candidates, so everything here is a pure function of the data and of explicit seeds: no file row
order, no process-dependent hashing, no user index in any seed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import numpy as np

from shared.data import Dataset

NO_ITEM = -1
MIN_INTERACTIONS_FOR_EVAL = 3  # one test + one validation + at least one train interaction
DEFAULT_NUM_NEGATIVES = 99
HASH_PREFIX_BYTES = 8
FINGERPRINT_BYTES = 8  # 16 hex characters
FINGERPRINT_DOMAIN = b"fedrec-split-v1\0"
_BYTE_ORDER: Literal["big"] = "big"
_LE_INT64 = np.dtype("<i8")


def _blake2b_uint64(text: str) -> int:
    """First 8 bytes of BLAKE2b (default 64-byte digest) of UTF-8 ``text``, as a big-endian unsigned int."""
    digest = hashlib.blake2b(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:HASH_PREFIX_BYTES], _BYTE_ORDER)


def tie_break_key(user_id: str, item_id: str) -> int:
    """Order of same-timestamp interactions: a stable hash of the raw pair, unbiased by id or file order."""
    return _blake2b_uint64(f"{user_id}:{item_id}")


def _negatives_seed(eval_seed: int, user_id: str) -> int:
    """Per-user sampling seed from (eval seed, raw user id), so candidates ignore partitions and indices."""
    return _blake2b_uint64(f"{eval_seed}:{user_id}")


def _frozen_int64(array: np.ndarray, name: str, shape: tuple[int, ...]) -> np.ndarray:
    result = np.array(array, dtype=np.int64, copy=True)
    if result.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {result.shape}")
    result.setflags(write=False)
    return result


@dataclass(frozen=True, eq=False)
class Split:
    """Train interactions in CSR form per user, plus one validation and one test item per user (-1: none)."""

    user_ids: tuple[str, ...]
    n_items: int
    train_users: np.ndarray
    train_items: np.ndarray
    train_indptr: np.ndarray
    valid_items: np.ndarray
    test_items: np.ndarray

    def __post_init__(self) -> None:
        n_train = len(self.train_items)
        n_users = self.n_users
        object.__setattr__(self, "train_users", _frozen_int64(self.train_users, "train_users", (n_train,)))
        object.__setattr__(self, "train_items", _frozen_int64(self.train_items, "train_items", (n_train,)))
        object.__setattr__(self, "train_indptr",
                           _frozen_int64(self.train_indptr, "train_indptr", (n_users + 1,)))
        object.__setattr__(self, "valid_items", _frozen_int64(self.valid_items, "valid_items", (n_users,)))
        object.__setattr__(self, "test_items", _frozen_int64(self.test_items, "test_items", (n_users,)))
        if self.train_indptr[0] != 0 or self.train_indptr[-1] != n_train:
            raise ValueError("train_indptr must start at 0 and end at len(train_items)")

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    def fingerprint(self) -> str:
        """16 hex chars naming the split; equal fingerprints mean every party evaluates the same thing."""
        digest = hashlib.blake2b(FINGERPRINT_DOMAIN, digest_size=FINGERPRINT_BYTES)
        digest.update(self.n_items.to_bytes(8, _BYTE_ORDER))
        digest.update(self.n_users.to_bytes(8, _BYTE_ORDER))
        for user_id in self.user_ids:
            encoded = user_id.encode("utf-8")
            digest.update(len(encoded).to_bytes(8, _BYTE_ORDER))
            digest.update(encoded)
        arrays = (self.train_users, self.train_items, self.train_indptr, self.valid_items, self.test_items)
        for array in arrays:
            digest.update(len(array).to_bytes(8, _BYTE_ORDER))
            digest.update(np.ascontiguousarray(array, dtype=_LE_INT64).tobytes())
        return digest.hexdigest()

    def user_train_items(self, u: int) -> np.ndarray:
        """Train items of internal user ``u`` in chronological order (a read-only view)."""
        return self.train_items[self.train_indptr[u]:self.train_indptr[u + 1]]

    def subset(self, users: np.ndarray) -> Split:
        """This split restricted to ``users`` (re-indexed 0..k-1 in the given order): one client's share."""
        chosen = np.asarray(users)
        if chosen.ndim != 1 or (chosen.size and not np.issubdtype(chosen.dtype, np.integer)):
            raise ValueError("users must be a 1-D array of internal user indices")
        chosen = chosen.astype(np.int64)
        if chosen.size and (chosen.min() < 0 or chosen.max() >= self.n_users):
            raise ValueError(f"users must be in [0, {self.n_users})")
        if np.unique(chosen).size != chosen.size:
            raise ValueError("users must not repeat")
        starts = self.train_indptr[chosen]
        counts = self.train_indptr[chosen + 1] - starts
        indptr = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        gather = np.repeat(starts - indptr[:-1], counts) + np.arange(indptr[-1], dtype=np.int64)
        return Split(
            user_ids=tuple(self.user_ids[u] for u in chosen.tolist()),
            n_items=self.n_items,
            train_users=np.repeat(np.arange(chosen.size, dtype=np.int64), counts),
            train_items=self.train_items[gather],
            train_indptr=indptr,
            valid_items=self.valid_items[chosen],
            test_items=self.test_items[chosen],
        )


def _tie_keys(dataset: Dataset) -> np.ndarray:
    """tie_break_key for interactions sharing (user, timestamp) with another; 0 elsewhere (never compared)."""
    users, timestamps = dataset.users, dataset.timestamps
    order = np.lexsort((timestamps, users))
    same = (users[order][1:] == users[order][:-1]) & (timestamps[order][1:] == timestamps[order][:-1])
    tied = np.zeros(len(order), dtype=bool)
    tied[1:] |= same
    tied[:-1] |= same
    rows = order[tied]
    keys = np.zeros(len(order), dtype=np.uint64)
    user_ids, item_ids = dataset.user_ids, dataset.item_ids
    keys[rows] = np.fromiter(
        (tie_break_key(user_ids[u], item_ids[i])
         for u, i in zip(users[rows].tolist(), dataset.items[rows].tolist(), strict=True)),
        dtype=np.uint64, count=len(rows))
    return keys


def leave_one_out(dataset: Dataset) -> Split:
    """Per user, by (timestamp, tie_break_key): latest → test, previous → validation, rest → train.

    Users with fewer than 3 interactions keep everything in train and get -1 for validation and test.
    """
    # Item index is a last resort only for 64-bit hash collisions; it is a pure function of the catalog.
    order = np.lexsort((dataset.items, _tie_keys(dataset), dataset.timestamps, dataset.users))
    users, items = dataset.users[order], dataset.items[order]
    counts = np.bincount(users, minlength=dataset.n_users).astype(np.int64)
    ends = np.cumsum(counts)
    evaluated = counts >= MIN_INTERACTIONS_FOR_EVAL
    test_rows, valid_rows = ends[evaluated] - 1, ends[evaluated] - 2
    valid_items = np.full(dataset.n_users, NO_ITEM, dtype=np.int64)
    test_items = np.full(dataset.n_users, NO_ITEM, dtype=np.int64)
    valid_items[evaluated] = items[valid_rows]
    test_items[evaluated] = items[test_rows]
    train = np.ones(len(order), dtype=bool)
    train[test_rows] = False
    train[valid_rows] = False
    train_counts = counts - 2 * evaluated
    return Split(
        user_ids=dataset.user_ids,
        n_items=dataset.n_items,
        train_users=users[train],
        train_items=items[train],
        train_indptr=np.concatenate(([0], np.cumsum(train_counts))),
        valid_items=valid_items,
        test_items=test_items,
    )


def _interacted(split: Split, u: int) -> np.ndarray:
    held_out = [item for item in (split.valid_items[u], split.test_items[u]) if item != NO_ITEM]
    return np.concatenate((split.user_train_items(u), np.array(held_out, dtype=np.int64)))


def sampled_negatives(split: Split, eval_seed: int, num_negatives: int = DEFAULT_NUM_NEGATIVES) -> np.ndarray:
    """[n_users, num_negatives] items each user never interacted with, drawn uniformly without replacement.

    Row u comes from Generator(PCG64(seed)) with seed = BLAKE2b(f"{eval_seed}:{raw user id}"), so the same
    raw user gets the same candidates in any process, partition or subset. Users without a test item: -1.
    """
    if num_negatives < 0:
        raise ValueError(f"num_negatives must be >= 0, got {num_negatives}")
    negatives = np.full((split.n_users, num_negatives), NO_ITEM, dtype=np.int64)
    for u in np.flatnonzero(split.test_items != NO_ITEM).tolist():
        allowed = np.ones(split.n_items, dtype=bool)
        allowed[_interacted(split, u)] = False
        candidates = np.flatnonzero(allowed)
        if candidates.size < num_negatives:
            raise ValueError(f"user {split.user_ids[u]!r} has only {candidates.size} items never interacted "
                             f"with; {num_negatives} sampled negatives are needed")
        rng = np.random.Generator(np.random.PCG64(_negatives_seed(eval_seed, split.user_ids[u])))
        negatives[u] = rng.choice(candidates, size=num_negatives, replace=False)
    return negatives


def full_ranking_exclusions(split: Split, u: int) -> np.ndarray:
    """Items not ranked against u's test item in full ranking: u's train and validation items (sorted)."""
    items = split.user_train_items(u)
    if split.valid_items[u] != NO_ITEM:
        items = np.append(items, split.valid_items[u])
    return np.unique(items)
