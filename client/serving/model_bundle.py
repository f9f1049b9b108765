"""Load what a partner serves — the run's shared model and the store's private user embeddings — into an
immutable ``ServingModel``, and watch the files for a newly published model.

Files read (every error names the file and what is wrong, so a malformed run dir fails at start-up, clearly):

- ``<run>/config.json`` — the run's settings (model shape, item tower, dataset, text encoder);
- ``<run>/model.npz`` — the final shared parameters, by name (server/run_record.py);
- ``<run>/cold_start.npz`` — the text -> item-vector map for new items (shared/cold_start.py). Older run dirs
  lack it: then one is fitted at load on the catalog (``fit_text_mapping``, ridge ``--mapping-ridge``) and
  ``ModelInfo``/the log say so;
- ``<state>/user_embeddings.npz`` — the store's users' private GMF/MLP vectors (client/state.py).

Hot reload: ``ModelWatcher`` polls the files' (mtime, size). Publishers replace files atomically (rename),
so a changed fingerprint means a complete file; the engine then builds a new snapshot off to the side and
swaps one reference (client/serving/engine.py). A model that fails to load is reported and the old one keeps
serving.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from client.state import EMBEDDINGS_FILE
from shared.cold_start import (
    ColdStartError,
    ItemMapping,
    ItemVectors,
    ScoringHead,
    UserVectors,
    catalog_item_vectors,
    fit_text_mapping,
    text_projection,
    user_vectors_of,
)
from shared.config import ConfigError, RunConfig, from_mapping
from shared.model import PRIVATE_PARAMETERS, NeuMF, set_shared, shared_names
from shared.workload import model_shape

CONFIG_FILE = "config.json"
MODEL_FILE = "model.npz"
MAPPING_FILE = "cold_start.npz"
VERSION_CHARS = 12
ZIP_MAGIC = b"PK\x03\x04"

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """A run dir or store state that cannot be served; the message names the file."""


@dataclass(frozen=True)
class ServingPaths:
    run_dir: Path
    state_dir: Path

    @property
    def config(self) -> Path:
        return self.run_dir / CONFIG_FILE

    @property
    def model(self) -> Path:
        return self.run_dir / MODEL_FILE

    @property
    def mapping(self) -> Path:
        return self.run_dir / MAPPING_FILE

    @property
    def embeddings(self) -> Path:
        return self.state_dir / EMBEDDINGS_FILE

    def fingerprint(self) -> tuple[tuple[int, int], ...]:
        """(mtime_ns, size) of every file a model is loaded from; a change means a new model was published."""
        stamps = []
        for path in (self.config, self.model, self.mapping, self.embeddings):
            try:
                stat = path.stat()
                stamps.append((stat.st_mtime_ns, stat.st_size))
            except FileNotFoundError:
                stamps.append((0, -1))
        return tuple(stamps)


def resolve_state_dir(run_dir: Path, store: str) -> Path:
    """``--store``: a store index of a simulation run (``<run>/stores/store-<i>``) or a state directory."""
    if store.isdigit():
        return run_dir / "stores" / f"store-{int(store)}"
    return Path(store).expanduser()


def read_run_config(paths: ServingPaths) -> RunConfig:
    try:
        values = json.loads(paths.config.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"{paths.config}: not found (is {paths.run_dir} a fedrec run directory?)"
                             ) from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{paths.config}: not readable JSON ({exc})") from None
    if not isinstance(values, dict):
        raise ModelLoadError(f"{paths.config}: expected a JSON object of run settings")
    try:
        return from_mapping(values)
    except ConfigError as exc:
        raise ModelLoadError(f"{paths.config}: {exc}") from None


@dataclass(frozen=True, eq=False)
class ServingModel:
    """One published model as served at one store. Never mutated after ``load_serving_model`` returns."""

    config: RunConfig
    model: NeuMF                # shared parameters + this store's users' private embeddings, eval mode
    head: ScoringHead           # the model's head as NumPy, read once (what requests score with)
    user_row: dict[str, int]    # raw user id -> row of the store's embedding tables
    users: UserVectors          # every store user's vectors
    item_vectors: ItemVectors   # the dataset catalog's vectors, as the model scores them
    mapping: ItemMapping        # text embedding -> item vectors (AddItem)
    mapping_source: str
    version: str
    loaded_at: float

    @property
    def gmf_output_weight(self) -> np.ndarray:
        """The output layer's GMF weights: what turns a shopper's GMF vector into the retrieval query."""
        return self.head.out_weight[:self.users.gmf.shape[1]]

    def fallback_user(self) -> UserVectors:
        """Mean of the store's users: the neutral start of a shopper the model has never seen."""
        return UserVectors(self.users.gmf.mean(0, keepdims=True), self.users.mlp.mean(0, keepdims=True))


def _read_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    try:
        with open(path, "rb") as handle:
            if handle.read(len(ZIP_MAGIC)) != ZIP_MAGIC:  # NumPy would report "pickled data" for any non-zip
                raise ModelLoadError(f"{path}: not an .npz file ({what})")
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: not found ({what})") from None
    except (OSError, ValueError, EOFError) as exc:
        raise ModelLoadError(f"{path}: not a readable .npz file ({what}): {exc}") from None


def _read_embeddings(paths: ServingPaths, config: RunConfig) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    arrays = _read_npz(paths.embeddings, "the store's user embeddings; has the store trained a round?")
    expected = {"user_ids", *(name.split(".")[0] for name in PRIVATE_PARAMETERS)}
    if set(arrays) != expected:
        raise ModelLoadError(f"{paths.embeddings}: expected arrays {sorted(expected)}, "
                             f"found {sorted(arrays)}")
    user_ids = arrays.pop("user_ids")
    dims = {"gmf_user": config.gmf_dim, "mlp_user": config.mlp_dim}
    for name, table in arrays.items():
        if table.shape != (len(user_ids), dims[name]):
            raise ModelLoadError(f"{paths.embeddings}: {name} has shape {table.shape}, the run's model needs "
                                 f"({len(user_ids)}, {dims[name]})")
        if not np.isfinite(table).all():
            raise ModelLoadError(f"{paths.embeddings}: {name} holds NaN or infinite values")
    return user_ids.astype(str), arrays


def _model_version(paths: ServingPaths) -> str:
    digest = hashlib.sha256(paths.model.read_bytes())
    if paths.embeddings.exists():
        digest.update(paths.embeddings.read_bytes())
    return f"{paths.run_dir.name}@{digest.hexdigest()[:VERSION_CHARS]}"


def load_serving_model(paths: ServingPaths, catalog_text: np.ndarray, mapping_ridge: float) -> ServingModel:
    """Everything a request needs from the published files; ``catalog_text`` is the dataset catalog's text
    embeddings in catalog order (the text tower's item features, and the mapping's fitting data)."""
    config = read_run_config(paths)
    n_items = len(catalog_text)
    features = catalog_text if config.item_tower != "id" else None
    shape = model_shape(config, n_items, features)
    user_ids, private = _read_embeddings(paths, config)
    model = NeuMF(len(user_ids), shape, None if features is None else torch.as_tensor(features))
    shared = _read_npz(paths.model, "the run's final shared parameters")
    names = shared_names(model)
    if set(shared) != set(names):
        missing, extra = sorted(set(names) - set(shared)), sorted(set(shared) - set(names))
        raise ModelLoadError(f"{paths.model}: does not fit the run's model ({config.item_tower} tower, "
                             f"{n_items} catalog items): missing {missing}, unexpected {extra}")
    try:
        set_shared(model, [shared[name] for name in names])
    except ValueError as exc:
        raise ModelLoadError(f"{paths.model}: {exc} (catalog has {n_items} items)") from None
    if not all(np.isfinite(a).all() for a in shared.values()):
        raise ModelLoadError(f"{paths.model}: holds NaN or infinite values")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in PRIVATE_PARAMETERS:
            params[name].copy_(torch.as_tensor(private[name.split(".")[0]]))
    model.eval()
    items = catalog_item_vectors(model)
    mapping, source = _mapping(paths, model, catalog_text, items, mapping_ridge,
                               config.cold_start_text_components)
    return ServingModel(
        config=config, model=model, head=ScoringHead.of(model),
        user_row={user: row for row, user in enumerate(user_ids.tolist())},
        users=user_vectors_of(model, np.arange(len(user_ids))), item_vectors=items, mapping=mapping,
        mapping_source=source,
        version=_model_version(paths), loaded_at=time.time())


def _mapping(paths: ServingPaths, model: NeuMF, catalog_text: np.ndarray, items: ItemVectors, ridge: float,
             components: int) -> tuple[ItemMapping, str]:
    if paths.mapping.exists():
        try:
            mapping = ItemMapping.load(paths.mapping)
        except ColdStartError as exc:
            raise ModelLoadError(str(exc)) from None
        if (mapping.gmf_dim, mapping.mlp_dim, mapping.text_dim) != (
                items.gmf.shape[1], items.mlp.shape[1], catalog_text.shape[1]):
            raise ModelLoadError(f"{paths.mapping}: maps {mapping.text_dim}-d text to ({mapping.gmf_dim}, "
                                 f"{mapping.mlp_dim}) vectors; this model and encoder need "
                                 f"{catalog_text.shape[1]}-d to ({items.gmf.shape[1]}, {items.mlp.shape[1]})")
        return mapping, MAPPING_FILE
    log.warning("%s: not found (a run from before cold start); fitting the text -> item map at load",
                paths.mapping)
    # the ridge is the serving setting, so the seed (which only draws the ridge's validation items) is unused
    return fit_text_mapping(catalog_text, items, seed=0, base=text_projection(model), components=components,
                            ridge=ridge), "fitted at load"


class ModelWatcher:
    """Polls the model files and asks for a reload when they change; a failed load is remembered (not retried
    until the files change again) and reported through ``on_error``."""

    def __init__(self, paths: ServingPaths, interval_s: float, reload: Callable[[], None]) -> None:
        self.paths = paths
        self.interval_s = interval_s
        self._reload = reload
        self._seen = paths.fingerprint()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fedrec-model-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def check(self) -> bool:
        """Reload if the files changed since the last look; True when a reload was attempted."""
        current = self.paths.fingerprint()
        if current == self._seen:
            return False
        self._seen = current
        self._reload()
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception as exc:  # the engine keeps the reason for ModelInfo; the watcher must live on
                log.warning("model reload failed, still serving the previous model: %s", exc)
