"""Specification of shared/training.py's negative sampling: uniform over the items a user never trained on."""

from __future__ import annotations

import numpy as np
import pytest

from shared.split import Split
from shared.training import TrainPairs

N_ITEMS = 12


def split_with(train: list[list[int]]) -> Split:
    users = np.repeat(np.arange(len(train)), [len(t) for t in train])
    indptr = np.concatenate([[0], np.cumsum([len(t) for t in train])])
    return Split(user_ids=tuple(f"u{k}" for k in range(len(train))), n_items=N_ITEMS, train_users=users,
                 train_items=np.concatenate([np.asarray(t, dtype=np.int64) for t in train]),
                 train_indptr=indptr, valid_items=np.full(len(train), -1), test_items=np.full(len(train), -1))


def recheck_everything(pairs: TrainPairs, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The plain rejection sampler: redraw every clash, re-checking the whole draw each round."""
    train = {(int(u), int(i)) for u, i in zip(pairs.split.train_users, pairs.split.train_items, strict=True)}
    items = rng.integers(0, N_ITEMS, size=len(users))
    while True:
        clash = np.array([(int(u), int(i)) in train for u, i in zip(users, items, strict=True)])
        if not clash.any():
            return items
        items[clash] = rng.integers(0, N_ITEMS, size=int(clash.sum()))


def test_negatives_avoid_each_users_train_items_and_match_the_plain_sampler() -> None:
    split = split_with([[0, 1, 2, 3, 4, 5, 6, 7, 8], [3], [], [0, 11]])  # user 0 leaves 3 items free
    pairs = TrainPairs(split)
    users = np.repeat(np.arange(4), 500)
    got = pairs.negatives_for(users, np.random.default_rng(7))
    np.testing.assert_array_equal(got, recheck_everything(pairs, users, np.random.default_rng(7)))
    for u in range(4):
        drawn = set(got[users == u].tolist())
        assert not drawn & set(split.user_train_items(u).tolist())
        assert drawn == set(range(N_ITEMS)) - set(split.user_train_items(u).tolist())  # every free item


def test_a_user_with_every_item_is_an_error_not_a_hang() -> None:
    pairs = TrainPairs(split_with([list(range(N_ITEMS))]))
    with pytest.raises(ValueError, match="could not draw negatives"):
        pairs.negatives_for(np.zeros(3, dtype=np.int64), np.random.default_rng(0))
