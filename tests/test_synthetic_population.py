"""The synthetic population: N shoppers per source shopper, each keeping a fraction of the source's items."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.data import Dataset, load_dataset
from simulations.synthetic_population import synthesize, write_population


def _pairs(dataset: Dataset, users: np.ndarray, items: np.ndarray, user_ids: list[str]
           ) -> set[tuple[str, str]]:
    return {(user_ids[u], dataset.item_ids[i]) for u, i in zip(users, items, strict=True)}


def test_factor_one_keeping_everything_is_the_source_with_renamed_users(tiny_data: Path) -> None:
    source = load_dataset(tiny_data)
    user_ids, users, items, timestamps = synthesize(source, factor=1, seed=0, keep=1.0)
    renamed = {(f"{source.user_ids[u]}-0", source.item_ids[i]) for u, i in zip(source.users, source.items,
                                                                             strict=True)}
    assert _pairs(source, users, items, user_ids) == renamed
    assert sorted(timestamps.tolist()) == sorted(source.timestamps.tolist())


def test_clones_share_about_keep_of_their_source_items_and_keep_its_store(tiny_data: Path, tmp_path: Path
                                                                           ) -> None:
    source = load_dataset(tiny_data)
    grown = load_dataset(write_population(tiny_data, tmp_path / "x4", factor=4, seed=1, keep=0.8))

    assert grown.n_users == 4 * source.n_users
    assert grown.item_ids == source.item_ids and grown.texts == source.texts
    assert grown.user_stores is not None and source.user_stores is not None
    source_index = {u: i for i, u in enumerate(source.user_ids)}
    shared = []
    for g, user_id in enumerate(grown.user_ids):
        s = source_index[user_id.rsplit("-", 1)[0]]
        assert grown.user_stores[g] == source.user_stores[s]
        mine = {grown.item_ids[i] for i in grown.items[grown.users == g]}
        theirs = {source.item_ids[i] for i in source.items[source.users == s]}
        shared.append(len(mine & theirs) / len(theirs))
    assert 0.75 < float(np.mean(shared)) < 0.9  # keep = 0.8, plus the odd popular draw of a kept item


def test_a_shopper_holds_each_item_once(tiny_data: Path) -> None:
    user_ids, users, items, _ = synthesize(load_dataset(tiny_data), factor=5, seed=2, keep=0.3)
    keys = users * 10_000 + items
    assert len(np.unique(keys)) == len(keys)
    assert len(np.unique(users)) == len(user_ids)


@pytest.mark.parametrize(("factor", "keep", "field"),
                         [(0, 0.8, "factor"), (2, 0.0, "keep"), (2, 1.5, "keep")])
def test_impossible_settings_are_refused_naming_the_field(tiny_data: Path, factor: int, keep: float,
                                                          field: str) -> None:
    with pytest.raises(ValueError, match=field):
        synthesize(load_dataset(tiny_data), factor=factor, seed=0, keep=keep)
