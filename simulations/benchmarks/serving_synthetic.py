"""A synthetic catalog of any size for the serving benchmarks: NeuMF's head with random (seeded) weights and
clustered item/user vectors, so that retrieval has structure to find (uniform random vectors in 32-d are the
worst case for any ANN index and unlike learned embeddings). The GMF output weights are set to one, so the
retrieval query is the user's 32-d GMF vector (plus the bias coordinate), the setting of the issue's numbers;
with tiny random output weights the query points almost along the bias axis, where the HNSW index served
until session 15 fell to recall@10 ~0.7 at ef=128 (docs/serving.md). Sizes, not quality, are what is
measured."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from client.serving.catalog import ItemTable
from client.serving.engine import Embedder, Recommender
from client.serving.model_bundle import ServingModel
from client.serving.settings import ServeSettings
from shared.cold_start import ItemMapping, ItemVectors, ScoringHead, UserVectors
from shared.config import from_mapping
from shared.model import ModelShape, NeuMF

GMF_DIM = 32   # the retrieval space of the numbers: 32-d collaborative vectors (+1 for the bias)
MLP_DIM = 32
HIDDEN = (64, 32, 16)
CLUSTERS = 256
NOISE = 0.5
USERS = 1000
TEXT_DIM = 384


class NoEmbedder:
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        raise RuntimeError("this benchmark encodes no text")


def clustered(rng: np.random.Generator, centers: np.ndarray, count: int) -> np.ndarray:
    return (centers[rng.integers(0, len(centers), count)]
            + NOISE * rng.normal(size=(count, centers.shape[1]))).astype(np.float32)


def synthetic_model(n_items: int, seed: int = 0, text_dim: int = TEXT_DIM) -> tuple[ServingModel, np.ndarray]:
    """A ServingModel over ``n_items`` synthetic items, and the catalog's (random unit) text embeddings."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    config = from_mapping({"gmf-dim": GMF_DIM, "mlp-dim": MLP_DIM, "mlp-layers": ",".join(map(str, HIDDEN)),
                           "item-tower": "id", "privacy": "none", "secagg": False})
    head = NeuMF(USERS, ModelShape(1, GMF_DIM, MLP_DIM, HIDDEN, "id")).eval()
    with torch.no_grad():  # GMF output weights of one: the retrieval query is the user's 32-d vector
        head.out.weight[0, :GMF_DIM] = 1.0
    gmf_centers = rng.normal(size=(CLUSTERS, GMF_DIM)).astype(np.float32)
    mlp_centers = rng.normal(size=(CLUSTERS, MLP_DIM)).astype(np.float32)
    items = ItemVectors(clustered(rng, gmf_centers, n_items), clustered(rng, mlp_centers, n_items),
                        rng.normal(scale=0.1, size=n_items).astype(np.float32))
    users = UserVectors(clustered(rng, gmf_centers, USERS), clustered(rng, mlp_centers, USERS))
    text = rng.normal(size=(n_items, text_dim)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    mapping = ItemMapping(rng.normal(scale=0.05, size=(text_dim, GMF_DIM + MLP_DIM + 1)).astype(np.float32),
                          np.zeros(GMF_DIM + MLP_DIM + 1, np.float32), GMF_DIM, MLP_DIM)
    model = ServingModel(config=config, model=head, head=ScoringHead.of(head),
                         user_row={f"u{n}": n for n in range(USERS)}, users=users,
                         item_vectors=items, mapping=mapping, mapping_source="synthetic",
                         version=f"synthetic-{n_items}", loaded_at=time.time())
    return model, text


def synthetic_recommender(model: ServingModel, text: np.ndarray, settings: ServeSettings,
                          embedder: Embedder | None = None, state_dir: object = None) -> Recommender:
    n_items = len(model.item_vectors)
    items = ItemTable.build([f"i{n}" for n in range(n_items)], [f"Item {n}" for n in range(n_items)], text,
                            np.zeros(n_items, np.float32))
    return Recommender(settings, items, model, {}, embedder or NoEmbedder(), state_dir)  # type: ignore[arg-type]
