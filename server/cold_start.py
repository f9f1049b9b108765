"""Publish the cold-start item mapping with a finished run's model (``cold_start.npz`` in the run directory).

The server holds the shared parameters (item side, MLP, output layer) and the public catalog text, which is
all the mapping needs: user embeddings stay at the stores. A serving store loads ``model.npz`` and
``cold_start.npz`` and places a new item with ``ItemMapping.place(encoder.encode_one(text))``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from shared.cold_start import (
    ColdStartError,
    ItemMapping,
    catalog_item_vectors,
    fit_text_mapping,
    text_projection,
)
from shared.config import RunConfig
from shared.model import ModelShape, NeuMF, set_shared, shared_names
from shared.text_encoder import TextEncoderError, encode_catalog
from shared.workload import load_workload

COLD_START_FILE = "cold_start.npz"
ITEM_SIDE_NAMES = ("gmf_item.weight", "gmf_item_proj.weight")


def fit_mapping(model: NeuMF, text_embeddings: np.ndarray, seed: int, components: int) -> ItemMapping:
    """The mapping from catalog text embeddings to ``model``'s item vectors: the model's own projection (text
    towers) plus a ridge fit of the rest, its strength chosen on held-out warm items, through the text's
    ``components`` leading principal directions (``cold-start-text-components``; 0: all of it)."""
    return fit_text_mapping(text_embeddings, catalog_item_vectors(model), seed, base=text_projection(model),
                            components=components)


def publish_mapping(run_dir: Path, model: NeuMF, text_embeddings: np.ndarray, seed: int,
                    components: int) -> Path:
    path = run_dir / COLD_START_FILE
    fit_mapping(model, text_embeddings, seed, components).save(path)
    return path


def catalog_text_embeddings(config: RunConfig) -> np.ndarray:
    """Every catalog item's text embedding (public; cached on disk by text)."""
    dataset = load_workload(config).dataset
    return encode_catalog([dataset.item_text(i) for i in range(dataset.n_items)], config.text_encoder)


def publish_for_run(run_dir: Path, config: RunConfig, names: list[str], shared: list[np.ndarray]) -> str:
    """Write ``cold_start.npz`` for a run's final shared parameters; returns what happened, for summary.json.

    The model file is already written when this runs, so a mapping that cannot be fitted is reported, not
    raised: the run's result must not be lost to an add-on.
    """
    if not any(name in names for name in ITEM_SIDE_NAMES):
        return "skipped: the final parameters are not a NeuMF item side"
    try:
        text = catalog_text_embeddings(config)
        n_items = load_workload(config).split.n_items
        feature_dim = int(text.shape[1]) if config.item_tower != "id" else 0
        shape = ModelShape.from_config(config, n_items, feature_dim)
        features = torch.as_tensor(text) if shape.uses_text else None
        model = NeuMF(1, shape, features)
        if shared_names(model) != names:
            return "skipped: the final parameters do not match this run's model"
        set_shared(model, shared)
        return str(publish_mapping(run_dir, model.eval(), text, config.seed,
                                   config.cold_start_text_components).name)
    except (ColdStartError, TextEncoderError, OSError, ValueError) as exc:
        return f"failed: {type(exc).__name__}: {exc}"
