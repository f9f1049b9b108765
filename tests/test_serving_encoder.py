"""AddItem and RecommendForText with the packaged all-MiniLM-L6-v2, offline (loaded once for the module)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from client.serving.bootstrap import MiniLMEmbedder, RunningRecommender, open_recommender
from tests.serving_fixtures import fast_settings, make_tiny_run


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    return MiniLMEmbedder("")


@pytest.fixture
def running(tmp_path: Path, minilm: MiniLMEmbedder) -> Iterator[RunningRecommender]:
    run = make_tiny_run(tmp_path)
    yield open_recommender(run.run_dir, run.state_dir, fast_settings(), minilm)


def test_the_packaged_encoder_puts_a_paraphrase_nearest_its_item(minilm: MiniLMEmbedder) -> None:
    item, paraphrase, unrelated = minilm.encode(["Compact espresso machine with milk frother",
                                                 "coffee maker that steams milk", "two-person camping tent"])
    assert item @ paraphrase > item @ unrelated + 0.2


def test_text_queries_are_served_with_the_packaged_encoder(running: RunningRecommender) -> None:
    recommender = running.recommender
    recommender.add_item("espresso", "Compact espresso machine with milk frother", ["Kitchen"])
    coffee, _ = recommender.recommend_for_text("coffee maker that steams milk", 5)
    tent, _ = recommender.recommend_for_text("two-person camping tent", 5)
    assert len(coffee) == 5 and [i.item_id for i in coffee] != [i.item_id for i in tent]


def test_an_added_item_is_placed_by_the_model_mapping_from_its_embedding(
        running: RunningRecommender, minilm: MiniLMEmbedder) -> None:
    recommender = running.recommender
    recommender.add_item("hammock", "Cotton hammock")
    row = recommender.items.index["hammock"]
    embedding = minilm.encode(["Cotton hammock"])[0]
    assert np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-5)
    expected = recommender.snapshot.model.mapping.place(embedding[None])
    placed = recommender.snapshot.space.take(np.array([row]))
    np.testing.assert_allclose(placed.gmf[0], expected.gmf[0], atol=1e-5)
