"""Specification of shared/partition.py: which store (client) holds which user."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.data import Dataset, load_dataset
from shared.partition import PARTITION_SCHEMES, dominant_categories, partition_users, store_names

GENRES = ("Action", "Comedy", "Drama", "Horror")


def write_dataset(directory: Path, n_users: int = 60, n_items: int = 40, with_users_csv: bool = True) -> Path:
    """Users who mostly watch one genre each (their dominant category), item i has genre i % 4."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "items.csv").write_text(
        "item_id,title,categories\n" + "".join(f"{i},Item {i},{GENRES[i % 4]}\n" for i in range(n_items)),
        encoding="utf-8")
    rows = []
    for u in range(n_users):
        favourite = u % 4
        liked = [i for i in range(n_items) if i % 4 == favourite]
        for item in rng.choice(liked, size=5, replace=False).tolist():
            rows.append(f"{u},{item},{int(rng.integers(0, 1000))}\n")
    (directory / "interactions.csv").write_text("user_id,item_id,timestamp\n" + "".join(rows),
                                                encoding="utf-8")
    if with_users_csv:
        stores = ("zeta", "alpha", "mid")
        (directory / "users.csv").write_text(
            "user_id,store\n" + "".join(f"{u},{stores[u % 3]}\n" for u in range(n_users)), encoding="utf-8")
    return directory


@pytest.fixture
def dataset(tmp_path: Path) -> Dataset:
    return load_dataset(write_dataset(tmp_path / "data"))


def test_schemes_are_listed() -> None:
    assert PARTITION_SCHEMES == ("stores-file", "iid", "dirichlet", "one-user-per-client")


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "stores-file", "one-user-per-client"])
def test_every_user_gets_exactly_one_valid_store(dataset: Dataset, scheme: str) -> None:
    stores = partition_users(dataset, scheme, num_stores=7, seed=0)
    assert stores.shape == (dataset.n_users,) and stores.dtype == np.int64
    assert stores.min() == 0
    assert stores.max() == len(store_names(dataset, scheme, num_stores=7)) - 1


# ------------------------------------------------------------------------------------------ stores-file


def test_stores_file_indexes_sorted_store_names(dataset: Dataset) -> None:
    stores = partition_users(dataset, "stores-file", num_stores=3, seed=0)
    assert store_names(dataset, "stores-file", 3) == ("alpha", "mid", "zeta")
    assert stores[:3].tolist() == [2, 0, 1]  # users 0, 1, 2 are in zeta, alpha, mid


def test_stores_file_without_users_csv_says_users_csv_is_needed(tmp_path: Path) -> None:
    ds = load_dataset(write_dataset(tmp_path, with_users_csv=False))
    with pytest.raises(ValueError, match=r"users\.csv"):
        partition_users(ds, "stores-file", num_stores=3, seed=0)


# ------------------------------------------------------------------------------------------------- iid


def test_iid_store_sizes_differ_by_at_most_one(dataset: Dataset) -> None:
    sizes = np.bincount(partition_users(dataset, "iid", num_stores=7, seed=0), minlength=7)
    assert sizes.sum() == 60
    assert sizes.max() - sizes.min() <= 1


def test_iid_is_deterministic_for_a_seed(dataset: Dataset) -> None:
    np.testing.assert_array_equal(partition_users(dataset, "iid", 7, seed=3),
                                  partition_users(dataset, "iid", 7, seed=3))


def test_iid_depends_on_the_seed(dataset: Dataset) -> None:
    assert not np.array_equal(partition_users(dataset, "iid", 7, seed=3),
                              partition_users(dataset, "iid", 7, seed=4))


def test_iid_with_one_store_per_user_is_a_permutation(dataset: Dataset) -> None:
    stores = partition_users(dataset, "iid", num_stores=60, seed=0)
    assert sorted(stores.tolist()) == list(range(60))


# ------------------------------------------------------------------------------------------- dirichlet


def test_dominant_category_is_the_most_frequent_one(dataset: Dataset) -> None:
    assert dominant_categories(dataset)[:4] == ["Action", "Comedy", "Drama", "Horror"]


def test_dominant_category_ties_go_to_the_alphabetically_first(tmp_path: Path) -> None:
    (tmp_path / "items.csv").write_text("item_id,title,categories\n1,A,Zed|Beta\n2,B,Alpha\n3,C,\n",
                                        encoding="utf-8")
    (tmp_path / "interactions.csv").write_text("user_id,item_id,timestamp\nu,1,1\nu,2,2\nv,1,1\nw,3,1\n",
                                               encoding="utf-8")
    assert dominant_categories(load_dataset(tmp_path)) == ["Alpha", "Beta", "unknown"]


def test_dirichlet_gives_every_store_at_least_one_user(dataset: Dataset) -> None:
    for seed in range(20):
        stores = partition_users(dataset, "dirichlet", num_stores=12, seed=seed, dirichlet_alpha=0.05)
        assert np.bincount(stores, minlength=12).min() >= 1


def test_dirichlet_is_deterministic_for_a_seed(dataset: Dataset) -> None:
    np.testing.assert_array_equal(partition_users(dataset, "dirichlet", 5, seed=1),
                                  partition_users(dataset, "dirichlet", 5, seed=1))


def test_dirichlet_depends_on_the_seed(dataset: Dataset) -> None:
    assert not np.array_equal(partition_users(dataset, "dirichlet", 5, seed=1),
                              partition_users(dataset, "dirichlet", 5, seed=2))


def test_small_alpha_concentrates_each_category_in_few_stores(dataset: Dataset) -> None:
    """Non-IID: with alpha 0.05 most users of a category share a store; IID would spread them ~evenly."""
    categories = np.array(dominant_categories(dataset))
    stores = partition_users(dataset, "dirichlet", num_stores=5, seed=0, dirichlet_alpha=0.05)
    shares = [np.bincount(stores[categories == g], minlength=5).max() / (categories == g).sum()
              for g in GENRES]
    assert np.mean(shares) > 0.6


def test_dirichlet_alpha_must_be_positive(dataset: Dataset) -> None:
    with pytest.raises(ValueError, match="dirichlet_alpha"):
        partition_users(dataset, "dirichlet", 5, seed=0, dirichlet_alpha=0.0)


# ---------------------------------------------------------------------------------- one-user-per-client


def test_one_user_per_client_uses_the_user_index(dataset: Dataset) -> None:
    np.testing.assert_array_equal(partition_users(dataset, "one-user-per-client", 1, seed=0), np.arange(60))
    assert store_names(dataset, "one-user-per-client", 1) == dataset.user_ids


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_more_stores_than_users_is_an_error(dataset: Dataset, scheme: str) -> None:
    with pytest.raises(ValueError, match=r"num_stores \(61\) exceeds the number of users \(60\)"):
        partition_users(dataset, scheme, num_stores=61, seed=0)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
@pytest.mark.parametrize("num_stores", [0, -2])
def test_fewer_than_one_store_is_an_error(dataset: Dataset, scheme: str, num_stores: int) -> None:
    with pytest.raises(ValueError, match="num_stores >= 1"):
        partition_users(dataset, scheme, num_stores=num_stores, seed=0)


def test_unknown_scheme_is_an_error_listing_the_schemes(dataset: Dataset) -> None:
    with pytest.raises(ValueError, match="one-user-per-client"):
        partition_users(dataset, "round-robin", num_stores=2, seed=0)


def test_generated_store_names(dataset: Dataset) -> None:
    assert store_names(dataset, "iid", 3) == ("store-0", "store-1", "store-2")
