"""Specification of shared/split.py: the leave-one-out split and evaluation candidates of PROTOCOL.md."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shared.data import Dataset, load_dataset
from shared.split import (
    Split,
    full_ranking_exclusions,
    leave_one_out,
    sampled_negatives,
    tie_break_key,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
HEADER = "user_id,item_id,timestamp\n"


def write_dataset(directory: Path, rows: list[tuple[str, str, int]], n_items: int) -> Path:
    """interactions.csv from (user, item, timestamp) rows plus a catalog of items '0'..n_items-1."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "items.csv").write_text(
        "item_id,title\n" + "".join(f"{i},Item {i}\n" for i in range(n_items)), encoding="utf-8")
    (directory / "interactions.csv").write_text(
        HEADER + "".join(f"{u},{i},{t}\n" for u, i, t in rows), encoding="utf-8")
    return directory


def random_rows(seed: int = 0, n_users: int = 40, n_items: int = 150) -> list[tuple[str, str, int]]:
    """Random interactions with many same-timestamp ties (timestamps drawn from a small range)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        count = int(rng.integers(1, 30))
        for item in rng.choice(n_items, size=count, replace=False).tolist():
            rows.append((f"u{u}", str(item), int(rng.integers(0, 6))))
    return rows


@pytest.fixture
def random_dataset(tmp_path: Path) -> Dataset:
    return load_dataset(write_dataset(tmp_path / "data", random_rows(), n_items=150))


def fingerprint_in_subprocess(directory: Path) -> str:
    code = ("import sys; from shared.data import load_dataset; from shared.split import leave_one_out; "
            "print(leave_one_out(load_dataset(sys.argv[1])).fingerprint())")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONHASHSEED": "12345"}
    result = subprocess.run([sys.executable, "-c", code, str(directory)], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, check=True)
    return result.stdout.strip()


def assert_same_split(a: Split, b: Split) -> None:
    assert a.user_ids == b.user_ids and a.n_items == b.n_items
    for name in ("train_users", "train_items", "train_indptr", "valid_items", "test_items"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


# --------------------------------------------------------------------------------------- leave-one-out


def test_latest_is_test_previous_is_validation_rest_is_train_in_time_order(tmp_path: Path) -> None:
    rows = [("a", "3", 30), ("a", "1", 10), ("a", "4", 40), ("a", "0", 20), ("a", "2", 50)]
    split = leave_one_out(load_dataset(write_dataset(tmp_path, rows, n_items=5)))
    assert split.test_items.tolist() == [2]
    assert split.valid_items.tolist() == [4]
    assert split.user_train_items(0).tolist() == [1, 0, 3]


def test_validation_and_test_items_are_not_in_train(random_dataset: Dataset) -> None:
    split = leave_one_out(random_dataset)
    for u in range(split.n_users):
        train = set(split.user_train_items(u).tolist())
        assert int(split.valid_items[u]) not in train
        assert int(split.test_items[u]) not in train


def test_every_interaction_lands_in_exactly_one_part(random_dataset: Dataset) -> None:
    split = leave_one_out(random_dataset)
    held_out = int((split.valid_items >= 0).sum() + (split.test_items >= 0).sum())
    assert len(split.train_items) + held_out == random_dataset.n_interactions


def test_users_with_fewer_than_three_interactions_are_train_only(tmp_path: Path) -> None:
    rows = [("one", "0", 1), ("two", "0", 1), ("two", "1", 2), ("three", "0", 1), ("three", "1", 2),
            ("three", "2", 3)]
    split = leave_one_out(load_dataset(write_dataset(tmp_path, rows, n_items=3)))
    assert split.user_ids == ("one", "three", "two")
    assert split.valid_items.tolist() == [-1, 1, -1]
    assert split.test_items.tolist() == [-1, 2, -1]
    assert [len(split.user_train_items(u)) for u in range(3)] == [1, 1, 2]


def test_train_arrays_are_csr_sorted_by_user(random_dataset: Dataset) -> None:
    split = leave_one_out(random_dataset)
    assert split.train_indptr.shape == (split.n_users + 1,)
    assert split.train_indptr[0] == 0 and split.train_indptr[-1] == len(split.train_items)
    assert np.all(np.diff(split.train_users) >= 0)
    for u in range(split.n_users):
        assert np.all(split.train_users[split.train_indptr[u]:split.train_indptr[u + 1]] == u)


def test_arrays_are_int64_and_read_only(random_dataset: Dataset) -> None:
    split = leave_one_out(random_dataset)
    arrays = (split.train_users, split.train_items, split.train_indptr, split.valid_items, split.test_items)
    for array in arrays:
        assert array.dtype == np.int64
        assert not array.flags.writeable


# ------------------------------------------------------------------------------------------- tie-break


def test_tie_break_key_is_first_8_bytes_of_blake2b_big_endian() -> None:
    expected = int.from_bytes(hashlib.blake2b(b"42:1337").digest()[:8], "big")
    assert tie_break_key("42", "1337") == expected


def test_same_timestamp_is_broken_by_the_larger_tie_break_key_not_by_item_id(tmp_path: Path) -> None:
    # Pick two items whose hash order disagrees with their id order, so an id tie-break would fail.
    first, second = next((a, b) for a in range(50) for b in range(a + 1, 50)
                         if tie_break_key("u", str(a)) > tie_break_key("u", str(b)))
    rows = [("u", "49", 1), ("u", str(first), 9), ("u", str(second), 9)]
    split = leave_one_out(load_dataset(write_dataset(tmp_path, rows, n_items=50)))
    assert split.test_items.tolist() == [first]
    assert split.valid_items.tolist() == [second]


def test_tie_break_uses_raw_ids_not_file_order(tmp_path: Path) -> None:
    rows = [("u", "0", 1), ("u", "1", 5), ("u", "2", 5), ("u", "3", 5)]
    forward = leave_one_out(load_dataset(write_dataset(tmp_path / "f", rows, n_items=4)))
    backward = leave_one_out(load_dataset(write_dataset(tmp_path / "b", rows[::-1], n_items=4)))
    latest = max(("1", "2", "3"), key=lambda item: tie_break_key("u", item))
    assert forward.test_items.tolist() == backward.test_items.tolist() == [int(latest)]


# ---------------------------------------------------------------------------------------- determinism


def test_shuffled_file_gives_the_same_split(tmp_path: Path) -> None:
    rows = random_rows(seed=3)
    shuffled = [rows[k] for k in np.random.default_rng(1).permutation(len(rows)).tolist()]
    original = leave_one_out(load_dataset(write_dataset(tmp_path / "a", rows, n_items=150)))
    reordered = leave_one_out(load_dataset(write_dataset(tmp_path / "b", shuffled, n_items=150)))
    assert_same_split(original, reordered)
    assert original.fingerprint() == reordered.fingerprint()


def test_another_process_computes_the_same_fingerprint(tmp_path: Path) -> None:
    directory = write_dataset(tmp_path, random_rows(seed=4), n_items=150)
    assert fingerprint_in_subprocess(directory) == leave_one_out(load_dataset(directory)).fingerprint()


def test_fingerprint_is_16_hex_chars(random_dataset: Dataset) -> None:
    fingerprint = leave_one_out(random_dataset).fingerprint()
    assert len(fingerprint) == 16
    int(fingerprint, 16)


def test_fingerprint_changes_when_the_data_changes(tmp_path: Path) -> None:
    rows = random_rows(seed=5)
    a = leave_one_out(load_dataset(write_dataset(tmp_path / "a", rows, n_items=150)))
    b = leave_one_out(load_dataset(write_dataset(tmp_path / "b", rows[:-1], n_items=150)))
    assert a.fingerprint() != b.fingerprint()


# ---------------------------------------------------------------------------------------------- subset


def test_subset_reindexes_users_in_the_given_order_and_keeps_their_data(random_dataset: Dataset) -> None:
    split = leave_one_out(random_dataset)
    chosen = np.array([7, 2, 30])
    part = split.subset(chosen)
    assert part.user_ids == tuple(split.user_ids[u] for u in chosen.tolist())
    assert part.n_items == split.n_items
    for new, old in enumerate(chosen.tolist()):
        np.testing.assert_array_equal(part.user_train_items(new), split.user_train_items(old))
        assert part.valid_items[new] == split.valid_items[old]
        assert part.test_items[new] == split.test_items[old]
    np.testing.assert_array_equal(np.unique(part.train_users), [0, 1, 2])


def test_subset_of_all_users_is_the_same_split(random_dataset: Dataset) -> None:
    split = leave_one_out(random_dataset)
    assert split.subset(np.arange(split.n_users)).fingerprint() == split.fingerprint()


@pytest.mark.parametrize("users", [np.array([0, 0]), np.array([-1]), np.array([10_000]), np.array([[0]])])
def test_subset_rejects_bad_user_lists(random_dataset: Dataset, users: np.ndarray) -> None:
    with pytest.raises(ValueError):
        leave_one_out(random_dataset).subset(users)


# -------------------------------------------------------------------------------------------- negatives


def test_negatives_have_the_requested_shape(random_dataset: Dataset) -> None:
    split = leave_one_out(random_dataset)
    negatives = sampled_negatives(split, eval_seed=7, num_negatives=20)
    assert negatives.shape == (split.n_users, 20) and negatives.dtype == np.int64


def test_negatives_never_include_an_interacted_item(random_dataset: Dataset) -> None:
    split = leave_one_out(random_dataset)
    negatives = sampled_negatives(split, eval_seed=7, num_negatives=99)
    for u in np.flatnonzero(split.test_items >= 0).tolist():
        interacted = set(split.user_train_items(u).tolist()) | {int(split.valid_items[u]),
                                                                 int(split.test_items[u])}
        assert not interacted & set(negatives[u].tolist())


def test_negatives_are_drawn_without_replacement(random_dataset: Dataset) -> None:
    split = leave_one_out(random_dataset)
    negatives = sampled_negatives(split, eval_seed=7, num_negatives=99)
    for u in np.flatnonzero(split.test_items >= 0).tolist():
        assert len(set(negatives[u].tolist())) == 99


def test_users_without_a_test_item_get_minus_one_rows(random_dataset: Dataset) -> None:
    split = leave_one_out(random_dataset)
    negatives = sampled_negatives(split, eval_seed=7, num_negatives=5)
    no_test = split.test_items < 0
    assert no_test.any()
    assert np.all(negatives[no_test] == -1)
    assert np.all(negatives[~no_test] >= 0)


def test_negatives_are_stable_across_calls(random_dataset: Dataset) -> None:
    split = leave_one_out(random_dataset)
    np.testing.assert_array_equal(sampled_negatives(split, 7), sampled_negatives(split, 7))


def test_negatives_depend_on_the_eval_seed(random_dataset: Dataset) -> None:
    split = leave_one_out(random_dataset)
    assert not np.array_equal(sampled_negatives(split, 7), sampled_negatives(split, 8))


def test_negatives_do_not_depend_on_the_user_index(random_dataset: Dataset) -> None:
    split = leave_one_out(random_dataset)
    chosen = np.flatnonzero(split.test_items >= 0)[::-1][:5]
    full = sampled_negatives(split, 7)
    part = sampled_negatives(split.subset(chosen), 7)
    np.testing.assert_array_equal(part, full[chosen])


def test_negatives_are_stable_across_processes(tmp_path: Path) -> None:
    directory = write_dataset(tmp_path, random_rows(seed=6), n_items=150)
    code = ("import sys, hashlib; from shared.data import load_dataset; "
            "from shared.split import leave_one_out, sampled_negatives; "
            "n = sampled_negatives(leave_one_out(load_dataset(sys.argv[1])), 2017); "
            "print(hashlib.sha256(n.astype('<i8').tobytes()).hexdigest())")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONHASHSEED": "999"}
    result = subprocess.run([sys.executable, "-c", code, str(directory)], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, check=True)
    here = sampled_negatives(leave_one_out(load_dataset(directory)), 2017)
    assert result.stdout.strip() == hashlib.sha256(here.astype("<i8").tobytes()).hexdigest()


def test_too_few_negative_candidates_raise_naming_the_user(tmp_path: Path) -> None:
    rows = [("greedy", str(i), i) for i in range(8)]
    rows += [("light", "0", 1), ("light", "1", 2), ("light", "2", 3)]
    split = leave_one_out(load_dataset(write_dataset(tmp_path, rows, n_items=10)))
    with pytest.raises(ValueError, match="'greedy'"):
        sampled_negatives(split, eval_seed=0, num_negatives=5)


def test_negative_counts_are_rejected(random_dataset: Dataset) -> None:
    with pytest.raises(ValueError):
        sampled_negatives(leave_one_out(random_dataset), 0, num_negatives=-1)


# ------------------------------------------------------------------------------------------ full ranking


def test_full_ranking_excludes_train_and_validation_but_not_test(tmp_path: Path) -> None:
    rows = [("a", "5", 1), ("a", "3", 2), ("a", "7", 3), ("a", "1", 4)]
    split = leave_one_out(load_dataset(write_dataset(tmp_path, rows, n_items=10)))
    assert full_ranking_exclusions(split, 0).tolist() == [3, 5, 7]
    assert split.test_items[0] == 1
