"""Specification of shared/cold_start.py and server/cold_start.py: vectors, scoring, item mapping, fold-in."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.cold_start import (
    ColdStartError,
    ItemMapping,
    ItemVectors,
    TextSubspace,
    UserVectors,
    average_user,
    catalog_item_vectors,
    fit_item_mapping,
    fit_text_mapping,
    fit_user_from_clicks,
    rank_for_text,
    sample_unclicked,
    score,
    text_projection,
    user_vectors_of,
)
from shared.model import ModelShape, NeuMF, get_shared, shared_names

N_USERS, N_ITEMS, TEXT_DIM = 6, 40, 12


def make_model(tower: str, hidden: tuple[int, ...] = (16, 8), seed: int = 0) -> NeuMF:
    """A small NeuMF with non-trivial (random, not the tiny init) weights, so the checks have teeth."""
    torch.manual_seed(seed)
    shape = ModelShape(n_items=N_ITEMS, gmf_dim=4, mlp_dim=8, hidden=hidden, item_tower=tower,
                       feature_dim=TEXT_DIM if tower != "id" else 0)
    features = torch.randn(N_ITEMS, TEXT_DIM) if tower != "id" else None
    model = NeuMF(N_USERS, shape, features)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.5)
    return model.eval()


@pytest.mark.parametrize("tower", ["id", "text", "hybrid"])
@pytest.mark.parametrize("hidden", [(16, 8), ()])
def test_score_equals_the_models_own_logits_for_catalog_items(tower: str, hidden: tuple[int, ...]) -> None:
    model = make_model(tower, hidden)
    users = np.array([0, 3, 5])
    expected = model(torch.as_tensor(users)[:, None], torch.arange(N_ITEMS)[None, :]).detach().numpy()
    got = score(model, user_vectors_of(model, users), catalog_item_vectors(model))
    assert got.shape == (3, N_ITEMS)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_item_vectors_take_and_concat_keep_rows_aligned() -> None:
    catalog = catalog_item_vectors(make_model("text"))
    joined = catalog.take(np.array([3, 1])).concat(catalog.take(np.array([7])))
    assert len(joined) == 3
    np.testing.assert_array_equal(joined.gmf[2], catalog.gmf[7])
    np.testing.assert_array_equal(joined.bias[:2], catalog.bias[[3, 1]])
    assert joined.mlp.dtype == np.float32


def test_bias_is_zero_for_a_tower_without_item_bias() -> None:
    assert not catalog_item_vectors(make_model("id")).bias.any()


def test_user_vectors_take_selects_rows() -> None:
    model = make_model("id")
    users = user_vectors_of(model, np.arange(N_USERS))
    np.testing.assert_array_equal(users.take(np.array([4])).mlp, model.mlp_user.weight.detach().numpy()[[4]])


def test_mismatched_vectors_are_rejected() -> None:
    with pytest.raises(ColdStartError, match="number of items"):
        ItemVectors(np.zeros((3, 4)), np.zeros((2, 8)), np.zeros(3))
    with pytest.raises(ColdStartError, match="NaN"):
        UserVectors(np.full((1, 4), np.nan), np.zeros((1, 8)))


def test_ridge_without_penalty_recovers_an_exact_linear_map() -> None:
    rng = np.random.default_rng(0)
    text = rng.normal(size=(200, TEXT_DIM)).astype(np.float32)
    true_weight = rng.normal(size=(TEXT_DIM, 4 + 8 + 1))
    stacked = text @ true_weight + 0.5
    targets = ItemVectors(stacked[:, :4], stacked[:, 4:12], stacked[:, 12])
    placed = fit_item_mapping(text, targets, ridge=0.0).place(text[:5])
    np.testing.assert_allclose(placed.stacked(), stacked[:5], atol=1e-3)


def test_a_large_ridge_shrinks_towards_the_mean_item() -> None:
    rng = np.random.default_rng(1)
    text = rng.normal(size=(100, TEXT_DIM)).astype(np.float32)
    targets = ItemVectors(rng.normal(size=(100, 4)), rng.normal(size=(100, 8)), rng.normal(size=100))
    placed = fit_item_mapping(text, targets, ridge=1e9).place(text[:3])
    np.testing.assert_allclose(placed.gmf, np.tile(targets.gmf.mean(0), (3, 1)), atol=1e-4)


def test_text_tower_mapping_keeps_the_models_projection_and_learns_the_bias() -> None:
    model = make_model("text")
    features = model.item_features.numpy()  # type: ignore[operator]
    catalog = catalog_item_vectors(model)
    mapping = fit_item_mapping(features, catalog, ridge=1.0, base=text_projection(model))
    placed = mapping.place(features)
    np.testing.assert_allclose(placed.gmf, catalog.gmf, atol=1e-4)
    np.testing.assert_allclose(placed.mlp, catalog.mlp, atol=1e-4)
    assert np.corrcoef(placed.bias, catalog.bias)[0, 1] > 0.5  # 40 items, 12 dims: a ridge fit, not exact


def test_text_projection_is_none_for_the_id_tower() -> None:
    assert text_projection(make_model("id")) is None


def test_mapping_round_trips_through_its_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    mapping = ItemMapping(rng.normal(size=(TEXT_DIM, 13)), rng.normal(size=13), 4, 8)
    mapping.save(tmp_path / "cold_start.npz")
    loaded = ItemMapping.load(tmp_path / "cold_start.npz")
    np.testing.assert_array_equal(loaded.weight, mapping.weight)
    assert (loaded.gmf_dim, loaded.mlp_dim) == (4, 8)


def test_a_missing_or_malformed_mapping_file_is_named_in_the_error(tmp_path: Path) -> None:
    with pytest.raises(ColdStartError, match=r"absent\.npz"):
        ItemMapping.load(tmp_path / "absent.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, weight=np.zeros((3, 3)))
    with pytest.raises(ColdStartError, match=r"bad\.npz"):
        ItemMapping.load(bad)


def test_placing_text_of_the_wrong_width_is_a_clear_error() -> None:
    mapping = ItemMapping(np.zeros((TEXT_DIM, 13)), np.zeros(13), 4, 8)
    with pytest.raises(ColdStartError, match="text_embeddings"):
        mapping.place(np.zeros((1, TEXT_DIM + 1)))


def test_clicks_move_the_clicked_items_up_and_leave_the_shared_model_alone() -> None:
    model = make_model("text")
    before = [p.copy() for p in get_shared(model)]
    catalog = catalog_item_vectors(model)
    clicked = np.array([5, 17, 29])
    start = average_user(model)
    user = fit_user_from_clicks(model, catalog, clicked, steps=50, learning_rate=0.1, seed=0, start=start)
    rank_before = (-score(model, start, catalog)[0]).argsort().argsort()[clicked].mean()
    rank_after = (-score(model, user, catalog)[0]).argsort().argsort()[clicked].mean()
    assert rank_after < rank_before
    assert rank_after < 5.0  # three clicks among 40 items: they end up near the top
    for old, new in zip(before, get_shared(model), strict=True):
        np.testing.assert_array_equal(old, new)


def test_fold_in_is_deterministic_for_a_seed() -> None:
    model = make_model("text")
    catalog = catalog_item_vectors(model)
    first = fit_user_from_clicks(model, catalog, np.array([1]), steps=10, learning_rate=0.05, seed=3)
    again = fit_user_from_clicks(model, catalog, np.array([1]), steps=10, learning_rate=0.05, seed=3)
    np.testing.assert_array_equal(first.gmf, again.gmf)


def test_fold_in_of_fifty_clicks_takes_well_under_fifty_milliseconds() -> None:
    model = make_model("text", hidden=(64, 32, 16))
    catalog = catalog_item_vectors(model)
    clicked = np.arange(0, 40, 2)
    fit_user_from_clicks(model, catalog, clicked, steps=30, learning_rate=0.05, seed=0)  # warm-up
    started = time.process_time()  # CPU time: the shared test machine's wall clock mostly measures waiting
    fit_user_from_clicks(model, catalog, clicked, steps=30, learning_rate=0.05, seed=0)
    assert time.process_time() - started < 0.05


def test_fold_in_rejects_no_clicks_and_unknown_items() -> None:
    model = make_model("id")
    catalog = catalog_item_vectors(model)
    with pytest.raises(ColdStartError, match="at least one"):
        fit_user_from_clicks(model, catalog, np.array([], dtype=np.int64), steps=5, learning_rate=0.1, seed=0)
    with pytest.raises(ColdStartError, match=r"\[0, 40\)"):
        fit_user_from_clicks(model, catalog, np.array([40]), steps=5, learning_rate=0.1, seed=0)


def test_a_query_equal_to_an_items_text_ranks_that_item_first() -> None:
    rng = np.random.default_rng(4)
    catalog = rng.normal(size=(30, TEXT_DIM)).astype(np.float32)
    catalog /= np.linalg.norm(catalog, axis=1, keepdims=True)
    assert int(np.argmax(rank_for_text(catalog[7], catalog))) == 7


def test_popularity_breaks_ties_between_equally_similar_items() -> None:
    catalog = np.eye(3, dtype=np.float32)[[0, 0, 1]]
    scores = rank_for_text(np.array([1.0, 0.0, 0.0]), catalog, popularity=np.array([1, 50, 500]),
                           popularity_weight=0.05)
    assert scores[1] > scores[0]
    assert scores[0] > scores[2]  # with a small weight the text still dominates


def test_a_placed_query_ranks_like_a_user_who_clicked_that_item() -> None:
    """Placing an item's own text and folding it in must favour that item and its close neighbours."""
    from shared.cold_start import QueryPlacement

    model = make_model("text")
    features = model.item_features.numpy()  # type: ignore[operator]
    catalog = catalog_item_vectors(model)
    mapping = fit_item_mapping(features, catalog, ridge=1e-3, base=text_projection(model))
    placement = QueryPlacement(model, mapping, catalog, start=average_user(model), learning_rate=0.1)
    scores = rank_for_text(features[11], features, placement=placement)
    baseline = score(model, average_user(model), catalog)[0]
    rank = int((scores > scores[11]).sum())
    assert rank < int((baseline > baseline[11]).sum())
    assert rank < 5


@pytest.mark.parametrize("hidden", [(16, 8), ()])
def test_fold_in_gradients_match_torch_autograd(hidden: tuple[int, ...]) -> None:
    """Adam's first step is lr·sign(grad) (the prior term is zero at the start), so the hand-written gradient
    must have autograd's signs on NeuMF's own loss."""
    from shared import cold_start

    model = make_model("text", hidden)
    catalog = catalog_item_vectors(model)
    start = average_user(model)
    user = fit_user_from_clicks(model, catalog, np.array([2, 9]), steps=1, learning_rate=1e-3, seed=5,
                                start=start)
    rng = np.random.default_rng(5)
    negatives = sample_unclicked(rng, N_ITEMS, np.array([2, 9]), 8)
    items = torch.as_tensor(np.concatenate([[2, 9], negatives]))
    gmf = torch.tensor(start.gmf, requires_grad=True)
    mlp = torch.tensor(start.mlp, requires_grad=True)
    gmf_item, mlp_item = model.item_vectors(items)
    fused = torch.cat([gmf * gmf_item, model.mlp(torch.cat([mlp.expand(len(items), -1), mlp_item], -1))], -1)
    logits = model.out(fused).squeeze(-1) + model.item_bias(items).squeeze(-1)
    labels = torch.tensor([1.0, 1.0] + [0.0] * 8)
    torch.nn.functional.binary_cross_entropy_with_logits(logits, labels).backward()
    assert cold_start.NEGATIVES_PER_CLICK == 4
    expected_gmf = start.gmf - 1e-3 * np.sign(gmf.grad.numpy())  # type: ignore[union-attr]
    expected_mlp = start.mlp - 1e-3 * np.sign(mlp.grad.numpy())  # type: ignore[union-attr]
    np.testing.assert_allclose(user.gmf, expected_gmf, atol=1e-5)
    np.testing.assert_allclose(user.mlp, expected_mlp, atol=1e-5)


def test_the_published_mapping_places_catalog_items_like_the_text_model(tmp_path: Path) -> None:
    from server.cold_start import COLD_START_FILE, publish_mapping

    model = make_model("text")
    features = model.item_features.numpy()  # type: ignore[operator]
    path = publish_mapping(tmp_path, model, features, seed=0, components=0)
    assert path == tmp_path / COLD_START_FILE
    placed = ItemMapping.load(path).place(features)
    catalog = catalog_item_vectors(model)
    np.testing.assert_allclose(placed.gmf, catalog.gmf, atol=1e-4)  # the projection is kept exactly
    users = user_vectors_of(model, np.arange(N_USERS))
    agreement = np.corrcoef(score(model, users, placed).ravel(), score(model, users, catalog).ravel())[0, 1]
    assert agreement > 0.8


def test_choose_ridge_prefers_little_shrinkage_for_a_noiseless_linear_target() -> None:
    from shared.cold_start import choose_ridge

    rng = np.random.default_rng(6)
    text = rng.normal(size=(300, TEXT_DIM)).astype(np.float32)
    stacked = text @ rng.normal(size=(TEXT_DIM, 13))
    targets = ItemVectors(stacked[:, :4], stacked[:, 4:12], stacked[:, 12])
    assert choose_ridge(text, targets, seed=0, grid=(0.1, 1000.0)) == 0.1


def test_a_run_whose_parameters_are_not_neumf_publishes_nothing(tmp_path: Path) -> None:
    from server.cold_start import publish_for_run

    status = publish_for_run(tmp_path, None, ["w", "b"], [np.zeros(2), np.zeros(2)])  # type: ignore[arg-type]
    assert status.startswith("skipped")
    assert not (tmp_path / "cold_start.npz").exists()


def test_a_finished_run_writes_a_loadable_mapping(make_config: object, tmp_path: Path) -> None:
    from server.cold_start import COLD_START_FILE, publish_for_run
    from shared.model import initial_shared, shared_names
    from shared.workload import catalog_features, load_workload, model_shape

    config = make_config(item_tower="text")  # type: ignore[operator]
    features = catalog_features(config)
    shape = model_shape(config, load_workload(config).split.n_items, features)
    model = NeuMF(1, shape, torch.as_tensor(features))
    status = publish_for_run(tmp_path, config, shared_names(model), initial_shared(shape, 0))
    assert status == COLD_START_FILE
    mapping = ItemMapping.load(tmp_path / COLD_START_FILE)
    assert (mapping.text_dim, mapping.gmf_dim, mapping.mlp_dim) == (384, config.gmf_dim, config.mlp_dim)


def test_a_query_of_the_wrong_width_is_a_clear_error_in_both_modes() -> None:
    from shared.cold_start import QueryPlacement

    model = make_model("text")
    catalog = catalog_item_vectors(model)
    mapping = ItemMapping(np.zeros((TEXT_DIM, 13)), np.zeros(13), 4, 8)
    text = np.eye(N_ITEMS, TEXT_DIM, dtype=np.float32)
    with pytest.raises(ColdStartError, match="query_embedding"):
        rank_for_text(np.zeros(TEXT_DIM + 1), text)
    with pytest.raises(ColdStartError, match="text_embeddings"):
        rank_for_text(np.zeros(TEXT_DIM + 1), text, placement=QueryPlacement(model, mapping, catalog))


def test_rank_metrics_count_ties_against_positives_and_cap_recall_at_k() -> None:
    from simulations.cold_start_protocol import rank_metrics

    positives = np.array([[True, False, False, True], [False, True, False, False]])
    perfect = rank_metrics(np.array([[4.0, 1.0, 0.0, 3.0], [0.0, 9.0, 1.0, 2.0]]), positives, k=1)
    assert perfect["recall@1"] == 1.0 and perfect["auc"] == 1.0  # recall = hits / min(k, positives)
    tied = rank_metrics(np.zeros((2, 4)), positives, k=1)
    assert tied["recall@1"] == 0.0 and tied["auc"] == 0.0  # a constant scorer gets nothing for ties


def test_held_out_items_and_users_leave_no_trace_in_the_training_data(tiny_data: Path) -> None:
    from shared.data import load_dataset
    from simulations.cold_start_protocol import hold_out

    dataset = load_dataset(tiny_data)
    holdout = hold_out(dataset, seed=0, item_share=0.2, user_share=0.2, eval_seed=1, num_negatives=5)
    warm = holdout.warm.dataset
    assert set(holdout.warm_items[warm.items]).isdisjoint(holdout.cold_items)
    assert set(holdout.warm_users[warm.users]).isdisjoint(holdout.cold_users)
    assert len(holdout.warm_items) + len(holdout.cold_items) == dataset.n_items
    assert holdout.warm.split.n_items == len(holdout.warm_items)  # cold items are not even negatives


@pytest.mark.parametrize("n_items", [12, 1_000_000])
def test_sampled_negatives_are_distinct_unclicked_items_on_small_and_large_catalogs(n_items: int) -> None:
    clicked = np.array([0, 3, 5, 7])
    negatives = sample_unclicked(np.random.default_rng(0), n_items, clicked, 8)
    assert len(negatives) == 8 and len(set(negatives.tolist())) == 8
    assert not set(negatives.tolist()) & set(clicked.tolist())
    assert ((negatives >= 0) & (negatives < n_items)).all()


def test_no_more_negatives_than_unclicked_items_exist() -> None:
    negatives = sample_unclicked(np.random.default_rng(0), 6, np.array([0, 1, 2, 2]), 50)
    assert sorted(negatives.tolist()) == [3, 4, 5]


def test_a_text_subspace_folds_into_one_mapping_that_equals_projecting_then_mapping() -> None:
    rng = np.random.default_rng(11)
    text = rng.normal(size=(50, TEXT_DIM)).astype(np.float32)
    subspace = TextSubspace.fit(text, 5)
    assert subspace.basis.shape == (TEXT_DIM, 5)
    np.testing.assert_allclose(subspace.basis.T @ subspace.basis, np.eye(5), atol=1e-5)
    weight, intercept = rng.normal(size=(TEXT_DIM, 9)), rng.normal(size=9)
    mapping = ItemMapping(weight.astype(np.float32), intercept.astype(np.float32), 4, 4)
    new = rng.normal(size=(7, TEXT_DIM)).astype(np.float32)
    folded, stepwise = subspace.compose(mapping).place(new), mapping.place(subspace.apply(new))
    np.testing.assert_allclose(folded.stacked(), stepwise.stacked(), rtol=1e-4, atol=1e-4)


def test_a_text_subspace_with_all_directions_changes_nothing_and_never_exceeds_the_data() -> None:
    rng = np.random.default_rng(12)
    text = rng.normal(size=(30, TEXT_DIM)).astype(np.float32)
    np.testing.assert_allclose(TextSubspace.fit(text, TEXT_DIM).apply(text), text, atol=1e-5)
    assert TextSubspace.fit(text[:4], 100).basis.shape == (TEXT_DIM, 3)  # 4 points span 3 directions
    with pytest.raises(ColdStartError, match="components"):
        TextSubspace.fit(text, 0)


def test_seeing_text_through_its_shared_directions_places_new_items_better() -> None:
    """Why the published mapping truncates the text (docs/cold_start.md): items share a few latent attributes
    (strong, common directions) and each text adds its own words (weak, idiosyncratic ones); each warm item's
    learned vector holds more than its text explains. A mapping fitted on few warm items explains that excess
    with the idiosyncratic words, which then misplace every new item."""
    rng = np.random.default_rng(13)
    dim, attributes, n_warm, n_new = 64, 4, 80, 200
    loading = np.linalg.qr(rng.normal(size=(dim, dim)))[0]
    latent = rng.normal(size=(n_warm + n_new, attributes)) * 3.0
    own_words = rng.normal(size=(n_warm + n_new, dim - attributes))
    text = (np.concatenate([latent, own_words], axis=1) @ loading.T).astype(np.float32)
    truth = latent @ rng.normal(size=(attributes, 9))
    stacked = truth + rng.normal(size=truth.shape) * 2.0  # what a warm item's vector learned beyond its text
    targets = ItemVectors(stacked[:, :4], stacked[:, 4:8], stacked[:, 8])
    warm, new = np.arange(n_warm), np.arange(n_warm, n_warm + n_new)

    def error(components: int) -> float:
        mapping = fit_text_mapping(text[warm], targets.take(warm), 0, components=components, ridge=0.1)
        return float(((mapping.place(text[new]).stacked() - truth[new]) ** 2).mean())

    assert error(attributes) < 0.25 * error(0)


@pytest.mark.parametrize("components", [0, 4])
def test_a_run_publishes_the_mapping_through_its_configured_text_directions(
        make_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, components: int) -> None:  # type: ignore[no-untyped-def]
    import server.cold_start as publishing
    from shared.workload import load_workload, model_shape

    config = make_config(item_tower="text", cold_start_text_components=components)
    n_items = load_workload(config).split.n_items
    text = np.random.default_rng(14).normal(size=(n_items, TEXT_DIM)).astype(np.float32)
    monkeypatch.setattr(publishing, "catalog_text_embeddings", lambda _config: text)
    torch.manual_seed(3)
    model = NeuMF(1, model_shape(config, n_items, text), torch.as_tensor(text)).eval()
    outcome = publishing.publish_for_run(tmp_path, config, shared_names(model), get_shared(model))
    assert outcome == publishing.COLD_START_FILE
    published = ItemMapping.load(tmp_path / publishing.COLD_START_FILE)
    expected = publishing.fit_mapping(model, text, config.seed, components)
    np.testing.assert_allclose(published.weight, expected.weight, atol=1e-6)
    whole = publishing.fit_mapping(model, text, config.seed, 0)
    assert np.allclose(published.weight, whole.weight, atol=1e-6) == (components == 0)
