"""Builders for the serving tests: a tiny trained-looking run directory and a fast stand-in text encoder.

No training: a NeuMF of the tiny shape (tests/conftest.py) gets random parameters large enough that items
score differently, and is written exactly as a run leaves it (config.json, model.npz by name, a store's
user_embeddings.npz). The stand-in encoder hashes words into unit vectors, so "same words" means "near".
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from client.serving.bootstrap import RunningRecommender, open_recommender
from client.serving.settings import ServeSettings
from client.state import EMBEDDINGS_FILE
from shared.atomic import write_atomic, write_json_atomic
from shared.config import RunConfig
from shared.data import load_dataset
from shared.model import NeuMF, shared_state
from shared.workload import model_shape, users_of_store
from tests.conftest import tiny_config, write_tiny_dataset

HASH_DIM = 32
PARAMETER_SCALE = 0.5  # random "trained" weights: big enough that items score differently
STORE = 0


class HashingEmbedder:
    """Bag of hashed words -> unit vector; deterministic, instant, and similar texts land near each other."""

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), HASH_DIM), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                bucket = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "big")
                out[row, bucket % HASH_DIM] += 1.0
        out[:, 0] += 1e-3  # no all-zero row
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def encode_catalog(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode(texts)


@dataclass(frozen=True)
class TinyRun:
    run_dir: Path
    state_dir: Path
    config: RunConfig
    store_users: tuple[str, ...]


def write_model(run: TinyRun, seed: int) -> None:
    """(Re)publish model.npz and the store's embeddings with parameters drawn from ``seed``."""
    dataset = load_dataset(run.config.dataset)
    embedder = HashingEmbedder()
    features = embedder.encode([dataset.item_text(i) for i in range(dataset.n_items)])
    use = features if run.config.item_tower != "id" else None
    shape = model_shape(run.config, dataset.n_items, use)
    model = NeuMF(len(run.store_users), shape, None if use is None else torch.as_tensor(use))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * PARAMETER_SCALE)
    shared = {name: tensor.numpy() for name, tensor in shared_state(model).items()}
    model_buffer = io.BytesIO()
    np.savez(model_buffer, allow_pickle=False, **shared)
    write_atomic(run.run_dir / "model.npz", lambda fh: fh.write(model_buffer.getvalue()))
    users_buffer = io.BytesIO()
    np.savez(users_buffer, user_ids=np.asarray(run.store_users),
             gmf_user=model.gmf_user.weight.detach().numpy(), mlp_user=model.mlp_user.weight.detach().numpy())
    write_atomic(run.state_dir / EMBEDDINGS_FILE, lambda fh: fh.write(users_buffer.getvalue()))


def make_tiny_run(root: Path, item_tower: str = "id", seed: int = 1) -> TinyRun:
    data = write_tiny_dataset(root / "data")
    config = tiny_config(data, item_tower=item_tower)
    run_dir = root / "run"
    run_dir.mkdir(parents=True)
    write_json_atomic(run_dir / "config.json", config.to_flower())
    dataset = load_dataset(data)
    users = tuple(dataset.user_ids[u] for u in users_of_store(config, STORE).tolist())
    run = TinyRun(run_dir, run_dir / "stores" / f"store-{STORE}", config, users)
    run.state_dir.mkdir(parents=True)
    write_model(run, seed)
    return run


def fast_settings(**changes: object) -> ServeSettings:
    """Ephemeral port, and a fast watcher that the tests drive by hand (reload_now)."""
    return ServeSettings(port=0, reload_interval_s=3600.0, refresh_steps=20).replace(**changes)


def open_tiny(run: TinyRun, **changes: object) -> RunningRecommender:
    return open_recommender(run.run_dir, run.state_dir, fast_settings(**changes), HashingEmbedder())
