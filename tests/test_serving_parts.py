"""The serving building blocks on their own: the durable log, logged clicks as training positives, MMR,
retrieval (exact and the cluster index), the append-only catalog, settings and the ``fedrec serve`` command
line."""

from __future__ import annotations

import itertools
import json
import logging
import threading
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
    ClusterIndex,
    ExactIndex,
    build_index,
    exact_top,
    kmeans,
    nearest_centroid,
    probe_rungs,
    recall_at_k,
    retrieval_query,
    top_indices,
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
    """Uniform random rows and queries in 9-d: no clusters to find, a hard geometry for a cluster index."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(RECALL_ITEMS, 9)).astype(np.float32),
            rng.normal(size=(RECALL_QUERIES, 9)).astype(np.float32))


def test_the_tuned_cluster_index_reaches_its_recall_target_against_exact_search() -> None:
    rows, queries = random_catalog()
    exact = ExactIndex(Growable(rows))
    index = build_index(Growable(rows), TUNING.replace(ann_recall_target=RECALL_GOAL), queries)
    assert isinstance(index, ClusterIndex)
    by_hand = np.mean([len(set(exact.search(q, 10, RECALL_ITEMS)) & set(index.search(q, 10, RECALL_ITEMS)))
                       / 10 for q in queries])
    assert recall_at_k(index, queries, exact_top(rows, queries, 10), RECALL_ITEMS) == pytest.approx(by_hand)
    assert index.width.recall_at_10 == pytest.approx(by_hand) and by_hand >= RECALL_GOAL
    assert index.width.probes < index.width.clusters  # ... without probing everything


def test_every_row_is_listed_once_under_its_nearest_centroid_and_all_probes_is_exact_search() -> None:
    rows, queries = random_catalog(1)
    index = ClusterIndex(rows, ServeSettings(ann_clusters=24))
    keys = np.concatenate([key for _, key in index._lists])
    assert sorted(keys.tolist()) == list(range(len(rows)))
    for cluster, (block, key) in enumerate(index._lists):
        np.testing.assert_array_equal(block, rows[key])
        assert (nearest_centroid(block, index._centroids) == cluster).all()
    index.set_probes(24)
    exact = ExactIndex(Growable(rows))
    for query in queries[:10]:
        assert sorted(index.search(query, 10, RECALL_ITEMS)) == sorted(exact.search(query, 10, RECALL_ITEMS))


def test_the_clustering_is_seeded_and_groups_nearby_rows() -> None:
    rng = np.random.default_rng(3)
    centers = rng.normal(scale=10.0, size=(12, 9))
    rows = (centers[rng.integers(0, len(centers), 3000)] + rng.normal(size=(3000, 9))).astype(np.float32)
    first, again = kmeans(rows, 24, seed=0), kmeans(rows, 24, seed=0)
    np.testing.assert_array_equal(first, again)  # the same index at every start
    nearest = first[nearest_centroid(rows, first)]
    spread = float(np.linalg.norm(rows - rows.mean(0), axis=1).mean())
    assert float(np.linalg.norm(rows - nearest, axis=1).mean()) < 0.25 * spread


def test_the_default_cluster_count_grows_with_the_square_root_of_the_catalog() -> None:
    rows, _ = random_catalog()
    assert ClusterIndex(rows, ServeSettings()).width.clusters == round(4 * np.sqrt(RECALL_ITEMS))
    assert ClusterIndex(rows[:10], ServeSettings(ann_clusters=50)).width.clusters == 10  # at most one per row


TUNING = ServeSettings(max_k=10, candidates=20, ann_min_items=1)


def test_the_probe_count_is_tuned_to_the_smallest_rung_that_reaches_the_recall_target() -> None:
    rows, queries = random_catalog()
    settings = TUNING.replace(ann_recall_target=0.99)
    index = build_index(Growable(rows), settings, queries)
    assert isinstance(index, ClusterIndex)
    rungs = probe_rungs(index.width.clusters)
    width = index.width
    assert width.probes in rungs and width.recall_at_10 is not None and width.tuning_s > 0
    truth = exact_top(rows, queries, 10)
    assert recall_at_k(index, queries, truth, RECALL_ITEMS) == width.recall_at_10  # the probes it reports
    assert width.recall_at_10 >= 0.99 and not width.short_of_target
    assert width.probes > rungs[0]  # uniform random rows: four clusters are not enough for 0.99
    index.set_probes(rungs[rungs.index(width.probes) - 1])  # the rung below fell short, or it would be chosen
    assert recall_at_k(index, queries, truth, RECALL_ITEMS) < 0.99


def test_probe_rungs_grow_by_half_and_end_with_every_cluster() -> None:
    assert probe_rungs(3) == [3]
    assert probe_rungs(20) == [4, 6, 9, 14, 20]
    rungs = probe_rungs(4000)
    assert rungs[-1] == 4000 and all(b > a for a, b in itertools.pairwise(rungs))


def test_a_search_probes_on_until_its_pool_holds_the_candidates_asked_for() -> None:
    rows, queries = random_catalog()
    index = ClusterIndex(rows, ServeSettings(ann_clusters=300, ann_probes=2))  # ~10 rows per cluster
    exact = ExactIndex(Growable(rows))
    for query in queries[:10]:
        found = index.search(query, 200, RECALL_ITEMS)
        assert len(found) == 200 and len(set(found.tolist())) == 200
        assert len(set(found.tolist()) & set(exact.search(query, 10, RECALL_ITEMS).tolist())) >= 8
    assert len(index.search(queries[0], 10, RECALL_ITEMS)) == 10


def test_tuning_that_ties_keep_below_the_target_probes_everything_and_says_so(
        caplog: pytest.LogCaptureFixture) -> None:
    rows = np.random.default_rng(4).normal(size=(RECALL_ITEMS, 3)).astype(np.float32)
    rows[:, 0] = 1.0
    queries = np.tile(np.array([[1.0, 0.0, 0.0]], dtype=np.float32), (RECALL_QUERIES, 1))  # every score ties
    with caplog.at_level(logging.WARNING):
        index = build_index(Growable(rows), TUNING, queries)
    assert isinstance(index, ClusterIndex) and index.width.short_of_target
    assert index.width.probes == index.width.clusters
    assert "below --ann-recall-target" in caplog.text


def test_a_probe_count_set_by_hand_is_not_tuned() -> None:
    rows, queries = random_catalog()
    index = build_index(Growable(rows), TUNING.replace(ann_probes=7), queries)
    assert isinstance(index, ClusterIndex) and index.width.probes == 7 and index.width.recall_at_10 is None


def test_the_cluster_index_finds_items_added_after_the_build() -> None:
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(200, 4)).astype(np.float32)
    index = ClusterIndex(rows, ServeSettings(ann_probes=1))
    longest = float(np.linalg.norm(rows, axis=1).max())
    added = np.array([[longest * 2, 0, 0, 0], [0, longest * 2, 0, 0]], dtype=np.float32)
    index.add(added, 200)  # the largest inner products with e1 and e2: found even probing one cluster
    assert len(index) == 202
    assert index.search(np.array([1.0, 0, 0, 0], dtype=np.float32), 1, 202).tolist() == [200]
    assert index.search(np.array([0, 1.0, 0, 0], dtype=np.float32), 1, 202).tolist() == [201]
    assert 201 not in index.search(np.array([0, 1.0, 0, 0], dtype=np.float32), 5, 201)  # not yet published


def test_searches_running_while_items_are_added_always_see_whole_clusters() -> None:
    rows, queries = random_catalog(2)
    index = ClusterIndex(rows, ServeSettings(ann_clusters=16, ann_probes=16))
    extra = np.random.default_rng(5).normal(size=(400, 9)).astype(np.float32)
    failures: list[BaseException] = []
    done = threading.Event()

    def search() -> None:
        try:
            while not done.is_set():
                for query in queries:
                    found = index.search(query, 10, RECALL_ITEMS + len(extra))
                    assert len(found) == 10 and len(set(found.tolist())) == 10
        except BaseException as exc:  # reported below, in the test's thread
            failures.append(exc)

    reader = threading.Thread(target=search)
    reader.start()
    for n in range(len(extra)):
        index.add(extra[n:n + 1], RECALL_ITEMS + n)
    done.set()
    reader.join()
    assert not failures
    keys = np.concatenate([key for _, key in index._lists])
    assert sorted(keys.tolist()) == list(range(RECALL_ITEMS + len(extra)))


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
    with pytest.raises(SettingsError, match="--candidates"):
        ServeSettings(max_k=50, candidates=20)
    with pytest.raises(SettingsError, match="--ann-recall-target"):
        ServeSettings(ann_recall_target=1.5)
    with pytest.raises(SettingsError, match="--ann-probes"):
        ServeSettings(ann_probes=-1)
    with pytest.raises(SettingsError, match="--ann-clusters"):
        ServeSettings(ann_clusters=-1)


def test_serve_on_a_directory_that_is_no_run_says_which_file(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--run-dir", str(tmp_path), "--store", "0", "--port", "0"]) == 1
    assert "config.json: not found" in capsys.readouterr().err


def test_serve_rejects_a_bad_setting_with_exit_code_2(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--run-dir", str(tmp_path), "--store", "0", "--max-k", "0"]) == 2
    assert "--max-k" in capsys.readouterr().err


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
