"""The data a run works on: dataset, split, evaluation candidates, store assignment — loaded once per process.

Every process of a simulation (server, each Ray actor) derives the same values from the same files because
each step is a pure function of the data and the config (PROTOCOL.md); this module only caches them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.cold_start import TextSubspace
from shared.config import ConfigError, RunConfig
from shared.data import Dataset, load_dataset
from shared.datasets import FileStamps, file_stamps, movielens_100k
from shared.model import TEXT_PROJECTIONS, ModelShape, NeuMF, initial_shared, shared_names
from shared.partition import partition_users
from shared.split import Split, leave_one_out, sampled_negatives

BUILTIN_DATASETS = {"ml-100k": movielens_100k}
NUM_EVAL_NEGATIVES = 99


@dataclass(frozen=True)
class Workload:
    dataset: Dataset
    split: Split
    negatives: np.ndarray  # [n_users, 99] sampled evaluation candidates per user


def dataset_directory(name: str) -> Path:
    """``ml-100k`` (fetched and cached on first use) or a directory of CSV files."""
    if name in BUILTIN_DATASETS:
        return BUILTIN_DATASETS[name]()
    path = Path(name).expanduser()
    if not path.is_dir():
        raise ConfigError(f"dataset: {name!r} is neither a built-in dataset ({', '.join(BUILTIN_DATASETS)}) "
                          "nor a directory holding interactions.csv and items.csv")
    return path.resolve()


def dataset_and_split(directory: str) -> tuple[Dataset, Split]:
    """The dataset in ``directory`` and its leave-one-out split, built once per process while its files stay
    the same (keyed by their names, sizes and modification times, so new data is read as soon as it lands).

    In a deployment every message runs in a fresh fork of the partner's SuperExec (deploy/warm_flower.py), so
    the SuperExec builds them before it forks (client/app.py ``warm``) and each message finds them in memory:
    rebuilding them cost ~0.6 s of CPU per message for an ML-100K-sized partner, five messages a round.
    """
    return _dataset_and_split(directory, file_stamps(Path(directory)))


@functools.lru_cache(maxsize=4)
def _dataset_and_split(directory: str, stamps: FileStamps) -> tuple[Dataset, Split]:
    dataset = load_dataset(directory)
    return dataset, leave_one_out(dataset)


def partner_workload(directory: str, config: RunConfig) -> tuple[Workload, np.ndarray | None]:
    """A partner's workload and catalog text features, built once per process while its files stay the same.

    Like ``dataset_and_split``, the SuperExec builds them before it forks (client/app.py ``warm``, with the
    run settings' defaults), so a message finds the evaluation candidates and the catalog's embeddings in
    memory instead of re-drawing and re-reading them: ~6 % of a forked task's CPU (profiled, session 14). A
    run with other settings (seed, item tower, encoder) builds its own in each task, as before.
    """
    stamps = file_stamps(Path(directory))
    workload = _workload(directory, stamps, config.eval_seed)
    features = (None if config.item_tower == "id"
                else _features(directory, stamps, config.eval_seed, config.text_encoder))
    for shared_array in (workload.negatives, features):  # every task forked from this process reads them
        if shared_array is not None:
            shared_array.setflags(write=False)
    return workload, features


@functools.lru_cache(maxsize=4)
def _workload(directory: str, stamps: FileStamps, eval_seed: int) -> Workload:
    dataset, split = _dataset_and_split(directory, stamps)
    return Workload(dataset, split, sampled_negatives(split, eval_seed, NUM_EVAL_NEGATIVES))


@functools.lru_cache(maxsize=4)
def _features(directory: str, stamps: FileStamps, eval_seed: int, encoder: str) -> np.ndarray:
    return _encoded_catalog(_workload(directory, stamps, eval_seed).dataset, encoder)


def _encoded_catalog(dataset: Dataset, encoder: str) -> np.ndarray:
    from shared.text_encoder import encode_catalog

    return encode_catalog([dataset.item_text(i) for i in range(dataset.n_items)], encoder)


def catalog_features(config: RunConfig, dataset: Dataset | None = None) -> np.ndarray | None:
    """Text embeddings of the catalog when the item tower uses them (public: every side may compute them)."""
    if config.item_tower == "id":
        return None
    if dataset is not None:
        return _encoded_catalog(dataset, config.text_encoder)
    directory = str(dataset_directory(config.dataset))
    return _features(directory, file_stamps(Path(directory)), config.eval_seed, config.text_encoder)


def model_shape(config: RunConfig, n_items: int, features: np.ndarray | None) -> ModelShape:
    return ModelShape.from_config(config, n_items, 0 if features is None else int(features.shape[1]))


def initial_parameters(config: RunConfig, shape: ModelShape, features: np.ndarray | None) -> list[np.ndarray]:
    """The federation's round-0 shared parameters (the server's, and the tuning proxy's).

    With ``federated-parameters = "item-bias"`` the item side is public and fixed, so it should carry what the
    catalog text says: the text projections start (and stay) at the text's leading principal directions, the
    directions items differ most along (genre, era, kind of product), rather than at random ones. On the
    proxy at ε = 1 (seed 0, validation) principal directions gave 0.446 sampled HR@10 against 0.427 for random
    ones (docs/results.md, session 8).
    """
    shared = initial_shared(shape, config.seed)
    if config.learned_shared == "all":
        return shared
    if features is None:
        raise ConfigError("federated-parameters: 'item-bias' needs the catalog text (item-tower = 'text')")
    directions = TextSubspace.fit(features, max(shape.gmf_dim, shape.mlp_dim)).basis  # [d, m]
    if directions.shape[1] < max(shape.gmf_dim, shape.mlp_dim):
        raise ConfigError(f"federated-parameters: the catalog text has {directions.shape[1]} principal "
                          f"directions, fewer than gmf-dim/mlp-dim ({shape.gmf_dim}/{shape.mlp_dim})")
    for index, name in enumerate(shared_names(NeuMF(1, shape))):
        if name in TEXT_PROJECTIONS:
            rows = shared[index].shape[0]
            shared[index] = np.ascontiguousarray(directions[:, :rows].T, dtype=shared[index].dtype)
    return shared


def load_workload(config: RunConfig) -> Workload:
    return _workload_in(str(dataset_directory(config.dataset)), config.eval_seed)


def _workload_in(directory: str, eval_seed: int) -> Workload:
    return _workload(directory, file_stamps(Path(directory)), eval_seed)


@functools.lru_cache(maxsize=8)
def _stores(directory: str, eval_seed: int, scheme: str, num_stores: int, seed: int, alpha: float
            ) -> np.ndarray:
    return partition_users(_workload_in(directory, eval_seed).dataset, scheme, num_stores, seed, alpha)


def store_of_users(config: RunConfig) -> np.ndarray:
    """Store index of every user of the dataset (int64 [n_users])."""
    workload = load_workload(config)
    if config.partition in ("iid", "dirichlet") and config.num_stores > workload.split.n_users:
        raise ConfigError(f"num-stores: {config.num_stores} stores but only {workload.split.n_users} users")
    return _stores(str(dataset_directory(config.dataset)), config.eval_seed, config.partition,
                   config.num_stores, config.seed, config.dirichlet_alpha)


def number_of_stores(config: RunConfig) -> int:
    return int(store_of_users(config).max()) + 1


def users_of_store(config: RunConfig, store: int) -> np.ndarray:
    stores = store_of_users(config)
    if store < 0 or store > stores.max():
        raise ConfigError(f"partition-id: store {store} does not exist "
                          f"(this partition has {stores.max() + 1})")
    return np.flatnonzero(stores == store)
