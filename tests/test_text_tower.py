"""The text encoder (packaged MiniLM, offline, cached) and the text item tower of NeuMF."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from shared import text_encoder
from shared.cold_start import TextSubspace
from shared.config import RunConfig
from shared.model import ModelShape, NeuMF, get_shared, initial_shared, shared_names
from shared.text_encoder import TextEncoderError, encode_catalog, model_dir, packaged_model_dir
from shared.workload import catalog_features, initial_parameters, load_workload, model_shape

SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.", "A girl is carrying a baby."]


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    return encode_catalog(SENTENCES, cache_root=tmp_path_factory.mktemp("cache"))


def test_packaged_model_is_found_without_a_hub() -> None:
    assert (packaged_model_dir() / "config.json").exists()


def test_embeddings_are_384_dimensional_and_unit_norm(embeddings: np.ndarray) -> None:
    assert embeddings.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def test_similar_sentences_are_closer_than_unrelated_ones(embeddings: np.ndarray) -> None:
    similar, unrelated = embeddings[0] @ embeddings[1], embeddings[0] @ embeddings[2]
    assert similar == pytest.approx(0.755, abs=0.01)  # the value sentence-transformers gives for this model
    assert unrelated < 0.1


def test_a_cached_catalog_is_not_encoded_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = encode_catalog(SENTENCES[:2], cache_root=tmp_path)

    def refuse(*_: object) -> None:
        raise AssertionError("the encoder was loaded although the catalog was cached")

    monkeypatch.setattr(text_encoder, "TextEncoder", refuse)
    np.testing.assert_array_equal(encode_catalog(SENTENCES[:2], cache_root=tmp_path), first)


def test_any_local_model_directory_works(tmp_path: Path) -> None:
    local = encode_catalog(SENTENCES[:1], setting=str(packaged_model_dir()), cache_root=tmp_path)
    assert local.shape == (1, 384)


def test_a_directory_that_is_not_a_model_is_rejected_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(TextEncoderError, match="text-encoder"):
        model_dir(str(tmp_path))


SHAPE_ID = ModelShape(n_items=1682, gmf_dim=8, mlp_dim=32, hidden=(64, 32, 16))
SHAPE_TEXT = ModelShape(n_items=1682, gmf_dim=8, mlp_dim=32, hidden=(64, 32, 16), item_tower="text",
                        feature_dim=384)


def test_text_tower_shares_projections_and_item_bias_but_not_the_features() -> None:
    names = shared_names(NeuMF(5, SHAPE_TEXT))
    assert {"gmf_item_proj.weight", "mlp_item_proj.weight", "item_bias.weight"} <= set(names)
    assert not any(name.startswith(("gmf_item.", "mlp_item.", "gmf_user", "mlp_user")) for name in names)


def test_text_tower_has_three_times_fewer_shared_dimensions_on_ml100k() -> None:
    text = sum(a.size for a in get_shared(NeuMF(1, SHAPE_TEXT)))
    ids = sum(a.size for a in get_shared(NeuMF(1, SHAPE_ID)))
    assert text == 384 * 40 + 1682 + sum(a.size for a in get_shared(NeuMF(1, SHAPE_ID))[2:])
    assert (ids, text) == (74073, 23835)  # 3.1x fewer noised dimensions


def test_text_tower_scores_depend_on_the_item_text() -> None:
    torch.manual_seed(0)
    features = torch.nn.functional.normalize(torch.randn(1682, 384), dim=1)
    model = NeuMF(2, SHAPE_TEXT, features)
    before = model.score_all_items(torch.tensor([0]))
    model.item_features[3] = model.item_features[7]
    after = model.score_all_items(torch.tensor([0]))
    assert after[0, 3] == pytest.approx(float(before[0, 7]), abs=1e-6)
    assert torch.equal(before[0, :3], after[0, :3])


def test_text_tower_rejects_features_of_the_wrong_shape() -> None:
    with pytest.raises(ValueError, match="item_features"):
        NeuMF(2, SHAPE_TEXT, torch.zeros(10, 384))


def test_a_public_item_side_starts_at_the_catalog_texts_principal_directions(
        make_config: Callable[..., RunConfig]) -> None:
    """federated-parameters = "item-bias": the fixed text projections carry what items differ along."""
    config = make_config(privacy="user", item_tower="text", federated_parameters="item-bias")
    features = catalog_features(config)
    assert features is not None
    shape = model_shape(config, load_workload(config).split.n_items, features)
    names = shared_names(NeuMF(1, shape))
    public = dict(zip(names, initial_parameters(config, shape, features), strict=True))
    seeded = dict(zip(names, initial_shared(shape, config.seed), strict=True))
    basis = TextSubspace.fit(features, max(shape.gmf_dim, shape.mlp_dim)).basis
    np.testing.assert_allclose(public["gmf_item_proj.weight"], basis[:, :shape.gmf_dim].T, atol=1e-6)
    np.testing.assert_allclose(public["mlp_item_proj.weight"], basis[:, :shape.mlp_dim].T, atol=1e-6)
    projection = public["mlp_item_proj.weight"]
    np.testing.assert_allclose(projection @ projection.T, np.eye(shape.mlp_dim), atol=1e-5)  # orthonormal
    for name in names:
        if not name.endswith("_proj.weight"):
            np.testing.assert_array_equal(public[name], seeded[name])
    default = make_config(privacy="user", item_tower="text")
    for got, expected in zip(initial_parameters(default, shape, features), initial_shared(shape, config.seed),
                             strict=True):
        np.testing.assert_array_equal(got, expected)  # "all": the seeded start, unchanged
