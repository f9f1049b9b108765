"""Assemble a ``Recommender`` from a run directory and a store's state: the one start-up path shared by
``fedrec serve``, the tests and the benchmarks.

The catalog and each shopper's history come from the store's data — the run's dataset restricted to the
store's users (simulation), or ``--data-dir`` (a partner's own CSV files) — plus the service's logs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

import numpy as np

from client.serving.catalog import ItemTable
from client.serving.engine import Recommender
from client.serving.model_bundle import (
    ModelLoadError,
    ModelWatcher,
    ServingModel,
    ServingPaths,
    load_serving_model,
    read_run_config,
    resolve_state_dir,
)
from client.serving.settings import ServeSettings
from shared.config import ConfigError
from shared.data import DataError, Dataset, load_dataset
from shared.workload import dataset_directory


class CatalogEmbedder(Protocol):
    def encode(self, texts: Sequence[str]) -> np.ndarray: ...

    def encode_catalog(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of the whole catalog exactly as training computed them (may be cached on disk)."""
        ...


class MiniLMEmbedder:
    """The run's text encoder (the packaged all-MiniLM-L6-v2 unless the run names another), loaded once."""

    def __init__(self, setting: str = "") -> None:
        from shared.text_encoder import load_encoder

        self.setting = setting
        self.encoder = load_encoder(setting)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self.encoder.encode(texts)

    def encode_catalog(self, texts: Sequence[str]) -> np.ndarray:
        from shared.text_encoder import encode_catalog

        return encode_catalog(texts, self.setting)


@dataclass
class RunningRecommender:
    recommender: Recommender
    paths: ServingPaths
    watcher: ModelWatcher

    def reload_now(self) -> bool:
        """Check the files once (what the watcher does every ``reload_interval_s``)."""
        return self.watcher.check()


def load_store_dataset(paths: ServingPaths, data_dir: Path | None) -> Dataset:
    config = read_run_config(paths)
    try:
        return load_dataset(data_dir if data_dir is not None else dataset_directory(config.dataset))
    except (DataError, ConfigError) as exc:
        raise ModelLoadError(f"the store's data: {exc}") from None


def histories(dataset: Dataset, users: set[str]) -> dict[str, list[int]]:
    """Catalog rows each of ``users`` interacted with, oldest first."""
    order = np.lexsort((dataset.items, dataset.timestamps, dataset.users))
    result: dict[str, list[int]] = {}
    for user, item in zip(dataset.users[order].tolist(), dataset.items[order].tolist(), strict=True):
        user_id = dataset.user_ids[user]
        if user_id in users:
            result.setdefault(user_id, []).append(item)
    return result


def open_recommender(run_dir: Path, state_dir: Path, settings: ServeSettings, embedder: CatalogEmbedder,
                     data_dir: Path | None = None) -> RunningRecommender:
    """Load everything and return a recommender with its (not yet started) model watcher."""
    paths = ServingPaths(Path(run_dir), Path(state_dir))
    if not paths.state_dir.is_dir():
        raise ModelLoadError(f"{paths.state_dir}: store state directory not found (--store)")
    dataset = load_store_dataset(paths, data_dir)
    catalog_text = embedder.encode_catalog([dataset.item_text(i) for i in range(dataset.n_items)])
    load = partial(load_serving_model, paths, catalog_text, settings.mapping_ridge)
    model: ServingModel = load()
    popularity = np.bincount(dataset.items, minlength=dataset.n_items).astype(np.float32)
    items = ItemTable.build(dataset.item_ids, dataset.titles, catalog_text, popularity)
    recommender = Recommender(settings, items, model, histories(dataset, set(model.user_row)), embedder,
                              paths.state_dir)
    watcher = ModelWatcher(paths, settings.reload_interval_s, partial(recommender.reload, load))
    return RunningRecommender(recommender, paths, watcher)


def run_embedder(run_dir: Path, store: str) -> MiniLMEmbedder:
    """The text encoder the run was trained with (its config names it; "" is the packaged MiniLM)."""
    state_dir = resolve_state_dir(Path(run_dir), store)
    return MiniLMEmbedder(read_run_config(ServingPaths(Path(run_dir), state_dir)).text_encoder)


def open_run_store(run_dir: Path, store: str, settings: ServeSettings,
                   embedder: CatalogEmbedder | None = None,
                   data_dir: Path | None = None) -> RunningRecommender:
    """``fedrec serve --run-dir --store``: the store's recommender, with the run's own text encoder unless
    ``embedder`` is given (loading MiniLM takes seconds, so callers opening several stores pass one in)."""
    return open_recommender(run_dir, resolve_state_dir(Path(run_dir), store), settings,
                            embedder or run_embedder(run_dir, store), data_dir)
