"""The serving building blocks on their own: the durable log, logged clicks as training positives, MMR,
retrieval (exact and HNSW), the append-only catalog, settings and the ``fedrec serve`` command line."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from client.serving.catalog import Growable
from client.serving.diversity import mmr
from client.serving.interaction_log import (
    INTERACTIONS_FILE,
    Interaction,
    JsonLinesLog,
    read_interactions,
    with_logged_clicks,
)
from client.serving.retrieval import (
    SEARCH_WIDTH_STEPS,
    AnnIndex,
    ExactIndex,
    SearchWidth,
    SharedExclusiveLock,
    build_index,
    exact_top,
    locality_order,
    recall_at_k,
    retrieval_query,
    top_indices,
    tune_search_width,
)
from client.serving.settings import ServeSettings, SettingsError
from client.store import StoreClient, store_data
from shared.messages import ROUND_KEY
from shared.model import initial_shared
from shared.split import Split
from shared.wire import pack
from simulations.cli import main

RECALL_ITEMS = 3000
RECALL_QUERIES = 50
RECALL_GOAL = 0.95


# -- interaction log --------------------------------------------------------------------------------------
def test_a_torn_last_line_is_dropped_with_a_warning_and_earlier_records_kept(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / INTERACTIONS_FILE
    JsonLinesLog(path).append(Interaction("u", "1", 5).to_record())
    with open(path, "ab") as handle:
        handle.write(b'{"user_id": "u", "item_')  # a crash in the middle of a write
    with caplog.at_level(logging.WARNING):
        assert [i.item_id for i in read_interactions(tmp_path)] == ["1"]
        log = JsonLinesLog(path)
    assert "torn" in caplog.text
    log.append(Interaction("u", "2", 6).to_record())
    assert [i.item_id for i in read_interactions(tmp_path)] == ["1", "2"]
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_each_record_is_on_disk_when_append_returns(tmp_path: Path) -> None:
    log = JsonLinesLog(tmp_path / "log.jsonl")
    for n in range(3):
        log.append({"n": n})
        assert JsonLinesLog(tmp_path / "log.jsonl").records()[-1] == {"n": n}


# -- logged clicks feed the next round --------------------------------------------------------------------
def _split() -> Split:
    return Split(user_ids=("a", "b"), n_items=6, train_users=np.array([0, 0, 1]),
                 train_items=np.array([0, 1, 2]), train_indptr=np.array([0, 2, 3]),
                 valid_items=np.array([4, 3]), test_items=np.array([5, 4]))


def test_logged_clicks_become_extra_training_positives_only(tmp_path: Path) -> None:
    log = JsonLinesLog(tmp_path / INTERACTIONS_FILE)
    for user, item in [("a", "i3"), ("a", "i3"), ("a", "i0"), ("a", "i5"), ("b", "i1"), ("zed", "i1"),
                       ("b", "added-later")]:
        log.append(Interaction(user, item, 1).to_record())
    split = with_logged_clicks(_split(), tuple(f"i{n}" for n in range(6)), tmp_path)
    # a: +i3 (once; i0 already trained, i5 is a's test item); b: +i1; unknown user and item ignored
    assert split.user_train_items(0).tolist() == [0, 1, 3]
    assert split.user_train_items(1).tolist() == [2, 1]
    assert split.valid_items.tolist() == [4, 3] and split.test_items.tolist() == [5, 4]


def test_without_a_log_the_split_is_unchanged(tmp_path: Path) -> None:
    split = _split()
    assert with_logged_clicks(split, tuple(f"i{n}" for n in range(6)), tmp_path) is split


def test_store_data_carries_the_catalog_ids_the_log_is_read_with(make_config) -> None:  # type: ignore[no-untyped-def]
    data = store_data(make_config(), 0)
    assert len(data.item_ids) == data.split.n_items and data.item_ids[0] == "0"


# -- diversity, retrieval, catalog ------------------------------------------------------------------------
def test_mmr_without_diversity_keeps_the_relevance_order() -> None:
    relevance = np.array([0.1, 0.9, 0.5, 0.7])
    unit = np.eye(4)
    assert mmr(relevance, unit, 3, 0.0).tolist() == [1, 3, 2]


def test_mmr_with_diversity_skips_a_near_duplicate() -> None:
    relevance = np.array([1.0, 0.99, 0.5])
    unit = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert mmr(relevance, unit, 2, 0.7).tolist() == [0, 2]


def test_top_indices_are_the_largest_best_first() -> None:
    assert top_indices(np.array([3.0, 9.0, 1.0, 7.0]), 2).tolist() == [1, 3]


def test_retrieval_query_reproduces_the_gmf_and_bias_share_of_the_logit() -> None:
    rng = np.random.default_rng(0)
    user, item, weight, bias = rng.normal(size=4), rng.normal(size=4), rng.normal(size=4), 0.3
    row = np.concatenate([item, [bias]])
    assert retrieval_query(user, weight) @ row == pytest.approx(weight @ (user * item) + bias, rel=1e-5)


@pytest.mark.parametrize("items", [ServeSettings().score_all_below, ServeSettings().score_all_below + 100])
def test_small_catalogs_are_scored_whole_and_larger_ones_retrieve_candidates_first(
        items: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Up to the default ``score_all_below`` NeuMF ranks the whole catalog (exactly the full model's top 10);
    above it the candidates come from the retrieval index, as score_all_crossover.py measured pays."""
    from shared.cold_start import score
    from simulations.benchmarks.serving_synthetic import synthetic_model, synthetic_recommender

    model, text = synthetic_model(items)
    recommender = synthetic_recommender(model, text[:, :8], ServeSettings(port=0))
    searches = []
    search = ExactIndex.search
    monkeypatch.setattr(ExactIndex, "search", lambda self, *a: searches.append(a) or search(self, *a))
    got = [int(i.item_id[1:]) for i in recommender.recommend("u3", 10).items]
    assert len(searches) == (items > ServeSettings().score_all_below)
    if not searches:
        assert got == top_indices(score(model.head, model.users.take(np.array([3])), model.item_vectors)[0],
                                  10).tolist()


def random_catalog(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Uniform random rows and queries in 9-d: a harder geometry for HNSW than learned vectors."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(RECALL_ITEMS, 9)).astype(np.float32),
            rng.normal(size=(RECALL_QUERIES, 9)).astype(np.float32))


@pytest.mark.parametrize("order_clusters", [0, 64])  # catalog order; grouped (keys must stay the row numbers)
def test_ann_recall_at_10_against_exact_search(order_clusters: int) -> None:
    rows, queries = random_catalog()
    exact = ExactIndex(Growable(rows))
    ann = AnnIndex(rows, ServeSettings(index_threads=1, hnsw_order_clusters=order_clusters))
    by_hand = np.mean([len(set(exact.search(q, 10, RECALL_ITEMS)) & set(ann.search(q, 10, RECALL_ITEMS))) / 10
                       for q in queries])
    assert recall_at_k(ann, queries, exact_top(rows, queries, 10), RECALL_ITEMS) == pytest.approx(by_hand)
    assert by_hand >= RECALL_GOAL


def test_the_insertion_order_puts_nearby_items_next_to_each_other() -> None:
    rng = np.random.default_rng(3)
    centers = rng.normal(scale=10.0, size=(12, 9))
    rows = (centers[rng.integers(0, len(centers), 3000)] + rng.normal(size=(3000, 9))).astype(np.float32)
    order = locality_order(rows, 24, seed=0)

    def mean_step(ordered: np.ndarray) -> float:  # distance between items stored next to each other
        return float(np.linalg.norm(np.diff(ordered, axis=0), axis=1).mean())

    assert sorted(order.tolist()) == list(range(len(rows)))
    assert mean_step(rows[order]) < 0.4 * mean_step(rows)
    assert np.array_equal(order, locality_order(rows, 24, seed=0))  # seeded: the same index every start
    assert np.array_equal(locality_order(rows, 0, seed=0), np.arange(len(rows)))   # turned off
    assert np.array_equal(locality_order(rows[:20], 24, seed=0), np.arange(20))    # fewer rows than clusters


TUNING = ServeSettings(max_k=10, candidates=20, index_threads=1, ann_min_items=1)


def test_the_beam_width_is_tuned_to_the_smallest_rung_that_reaches_the_recall_target() -> None:
    rows, queries = random_catalog()
    settings = TUNING.replace(hnsw_recall_target=0.99)
    index = build_index(Growable(rows), settings, queries)
    assert isinstance(index, AnnIndex)
    rungs = [round(settings.candidates * step) for step in SEARCH_WIDTH_STEPS]
    width = index.width
    assert width.ef in rungs and width.recall_at_10 is not None
    truth = exact_top(rows, queries, 10)
    assert recall_at_k(index, queries, truth, RECALL_ITEMS) == width.recall_at_10  # the beam it said it uses
    assert width.recall_at_10 >= 0.99 and not width.short_of_target
    if width.ef > rungs[0]:  # the rung below fell short, or it would have been chosen
        index.set_search_width(rungs[rungs.index(width.ef) - 1])
        assert recall_at_k(index, queries, truth, RECALL_ITEMS) < 0.99


class BeamLimitedIndex:
    """Finds each query's true best items only with a beam of at least ``needs`` (the worst ones otherwise),
    and with ``flawed`` always misses one of them: a graph that no beam makes perfect."""

    def __init__(self, rows: np.ndarray, needs: int, flawed: bool = False, degree: int = 16) -> None:
        self.rows, self.needs, self.flawed, self.ef = rows, needs, flawed, 0
        self.width = SearchWidth(0, degree=degree)

    def __len__(self) -> int:
        return len(self.rows)

    def set_search_width(self, ef: int) -> None:
        self.ef = ef

    def search(self, query: np.ndarray, count: int, size: int) -> np.ndarray:
        scores = self.rows @ query
        if self.ef < self.needs:
            return top_indices(-scores, count)
        best = top_indices(scores, count)
        return np.concatenate([best[:-1], top_indices(-scores, 1)]) if self.flawed else best


@pytest.mark.parametrize(("needs", "flawed", "chosen", "recall"),
                         [(20, False, 20, 1.0), (40, False, 40, 1.0), (100, False, 100, 1.0),
                          (40, True, 40, 0.9),    # short of the target: the smallest beam at the plateau
                          (101, False, 20, 0.0)])
def test_tuning_takes_the_first_beam_that_reaches_the_target_or_the_smallest_at_the_best_recall(
        needs: int, flawed: bool, chosen: int, recall: float) -> None:
    rows, queries = random_catalog()
    index = BeamLimitedIndex(rows, needs, flawed)
    width = tune_search_width(index, queries, exact_top(rows, queries, 10), TUNING)  # type: ignore[arg-type]
    assert (width.ef, width.recall_at_10, index.ef) == (chosen, pytest.approx(recall), chosen)
    assert width.short_of_target is (recall < TUNING.hnsw_recall_target)


@pytest.mark.parametrize(("degree_needed", "built"), [(16, [16]), (32, [16, 32]), (128, [16, 32, 64])])
def test_a_graph_no_beam_can_fix_is_rebuilt_with_a_larger_degree(
        degree_needed: int, built: list[int], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    import client.serving.retrieval as retrieval

    degrees = []

    def degree_limited(rows: np.ndarray, settings: ServeSettings, order: np.ndarray) -> BeamLimitedIndex:
        assert len(order) == len(rows)  # the insertion order, computed once for every rebuild
        degrees.append(settings.hnsw_m)
        return BeamLimitedIndex(rows, needs=0, flawed=settings.hnsw_m < degree_needed, degree=settings.hnsw_m)

    monkeypatch.setattr(retrieval, "AnnIndex", degree_limited)
    rows, queries = random_catalog()
    with caplog.at_level(logging.WARNING):
        index = build_index(Growable(rows), TUNING, queries)
    assert degrees == built and index.width is not None and index.width.degree == built[-1]
    assert (index.width.recall_at_10 == 1.0) is (degree_needed <= 64)
    assert ("below --hnsw-recall-target" in caplog.text) is (degree_needed > 64)


def test_a_beam_width_set_by_hand_is_not_tuned() -> None:
    rows, queries = random_catalog()
    index = build_index(Growable(rows), TUNING.replace(hnsw_ef_search=30), queries)
    assert isinstance(index, AnnIndex) and index.width.ef == 30 and index.width.recall_at_10 is None


def test_the_ann_index_finds_items_added_after_the_build() -> None:
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(200, 4)).astype(np.float32)
    index = AnnIndex(rows, ServeSettings(index_threads=1))
    longest = float(np.linalg.norm(rows, axis=1).max())
    index.add(np.array([[longest, 0, 0, 0]], dtype=np.float32), 200)  # the largest inner product with e1
    assert index.search(np.array([1.0, 0, 0, 0], dtype=np.float32), 1, 201).tolist() == [200]


def test_the_item_space_gives_back_the_vectors_it_was_built_and_grown_with() -> None:
    from client.serving.catalog import ItemSpace
    from shared.cold_start import ItemVectors

    rng = np.random.default_rng(2)

    def vectors(n: int) -> ItemVectors:
        return ItemVectors(rng.normal(size=(n, 4)), rng.normal(size=(n, 3)), rng.normal(size=n))

    first, added = vectors(5), vectors(2)
    space = ItemSpace(first)
    space.append(added)
    both = first.concat(added)
    picked = space.take(np.array([6, 0, 3]))
    for name in ("gmf", "mlp", "bias"):
        np.testing.assert_array_equal(getattr(picked, name), getattr(both, name)[[6, 0, 3]])
        np.testing.assert_array_equal(getattr(space.vectors(6), name), getattr(both, name)[:6])


def test_growable_readers_keep_their_view_while_it_grows() -> None:
    grow = Growable(np.arange(3, dtype=np.float32))
    before = grow.view()
    grow.append(np.arange(5000, dtype=np.float32))
    assert len(before) == 3 and len(grow) == 5003 and grow.view()[3:6].tolist() == [0.0, 1.0, 2.0]


# -- settings and the command line ------------------------------------------------------------------------
def test_settings_name_the_flag_out_of_range() -> None:
    with pytest.raises(SettingsError, match="--max-k"):
        ServeSettings(max_k=0)
    with pytest.raises(SettingsError, match="--hnsw-ef-search"):
        ServeSettings(candidates=200, hnsw_ef_search=100)
    with pytest.raises(SettingsError, match="--hnsw-recall-target"):
        ServeSettings(hnsw_recall_target=1.5)
    with pytest.raises(SettingsError, match="--hnsw-order-clusters"):
        ServeSettings(hnsw_order_clusters=-1)


def test_serve_on_a_directory_that_is_no_run_says_which_file(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--run-dir", str(tmp_path), "--store", "0", "--port", "0"]) == 1
    assert "config.json: not found" in capsys.readouterr().err


def test_serve_rejects_a_bad_setting_with_exit_code_2(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--run-dir", str(tmp_path), "--store", "0", "--max-k", "0"]) == 2
    assert "--max-k" in capsys.readouterr().err


def test_a_waiting_addition_holds_back_new_searches() -> None:
    lock = SharedExclusiveLock()
    order: list[str] = []
    reading = threading.Event()

    def writer() -> None:
        with lock.exclusive():
            order.append("add")

    with lock.shared():
        thread = threading.Thread(target=writer)
        thread.start()
        while not lock._writer:  # the writer is now waiting for this search to finish
            time.sleep(0.001)

        def late_reader() -> None:
            reading.set()
            with lock.shared():
                order.append("search")

        late = threading.Thread(target=late_reader)
        late.start()
        reading.wait()
        time.sleep(0.02)
        assert order == []  # neither may run while the first search holds the lock
    thread.join()
    late.join()
    assert order == ["add", "search"]


class _StopRound(Exception):
    pass


def test_a_store_round_trains_on_logged_clicks(make_config, tmp_path: Path,  # type: ignore[no-untyped-def]
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config()
    data = store_data(config, 0)
    split = data.split
    taken = {*split.user_train_items(0).tolist(), int(split.valid_items[0]), int(split.test_items[0])}
    clicked = next(i for i in range(split.n_items) if i not in taken)
    JsonLinesLog(tmp_path / INTERACTIONS_FILE).append(
        Interaction(split.user_ids[0], data.item_ids[clicked], 1).to_record())
    trained: list[Split] = []

    def capture(model: object, split: Split, *args: object) -> None:
        trained.append(split)
        raise _StopRound

    monkeypatch.setattr("client.store.train_store", capture)
    client = StoreClient(config, 0, data, tmp_path)
    with pytest.raises(_StopRound):
        client.fit(pack(initial_shared(client.shape, 0)), {ROUND_KEY: 1})
    assert trained[0].user_train_items(0).tolist() == [*split.user_train_items(0).tolist(), clicked]
    assert trained[0].test_items.tolist() == split.test_items.tolist()
