"""Specification of shared/text_encoder.py: packaged MiniLM offline, bad input, per-text cache, threads."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from shared import text_encoder
from shared.text_encoder import MAX_CHARS, TextEncoder, TextEncoderError, encode_catalog, packaged_model_dir


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder(packaged_model_dir())


def test_loading_sets_offline_mode_and_draws_no_progress_bar(capfd: pytest.CaptureFixture[str]) -> None:
    TextEncoder(packaged_model_dir())
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert "Loading weights" not in capfd.readouterr().err


def test_one_text_is_a_unit_384_vector_equal_to_its_batch_row(encoder: TextEncoder) -> None:
    texts = ["Toy Story (1995). Categories: Animation, Children's, Comedy", "a much longer second text " * 5]
    batch = encoder.encode(texts)
    one = encoder.encode_one(texts[0])
    assert one.shape == (384,)
    assert np.linalg.norm(one) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(one, batch[0], atol=1e-5)  # padding inside a batch changes nothing


def test_text_is_truncated_at_256_tokens(encoder: TextEncoder) -> None:
    long_a, long_b = "running shoes " * 300, "running shoes " * 200 + "garden hose " * 100
    np.testing.assert_allclose(encoder.encode_one(long_a), encoder.encode_one(long_b), atol=1e-6)


def test_a_huge_text_is_cut_not_a_crash(encoder: TextEncoder) -> None:
    huge = "x" * (50 * MAX_CHARS)
    assert encoder.encode_one(huge).shape == (384,)


@pytest.mark.parametrize("bad", ["", "   \n", None])
def test_empty_or_non_string_text_is_a_clear_error(encoder: TextEncoder, bad: object) -> None:
    with pytest.raises(TextEncoderError, match="text"):
        encoder.encode([bad])  # type: ignore[list-item]


def test_encoding_restores_the_process_thread_count(encoder: TextEncoder) -> None:
    before = torch.get_num_threads()
    encoder.encode(["one"])
    assert torch.get_num_threads() == before


def test_the_cache_is_keyed_by_text_so_a_grown_catalog_encodes_only_new_items(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = encode_catalog(["alpha item", "beta item"], cache_root=tmp_path)
    encoded: list[str] = []
    real = text_encoder.TextEncoder

    class Recording(real):  # type: ignore[misc, valid-type]
        def encode(self, texts: object) -> np.ndarray:
            encoded.extend(texts)  # type: ignore[arg-type]
            return super().encode(texts)  # type: ignore[arg-type]

    monkeypatch.setattr(text_encoder, "TextEncoder", Recording)
    grown = encode_catalog(["beta item", "gamma item", "alpha item"], cache_root=tmp_path)
    assert encoded == ["gamma item"]
    np.testing.assert_array_equal(grown[[2, 0]], first)


def test_a_corrupt_cache_shard_is_re_encoded_not_fatal(tmp_path: Path) -> None:
    first = encode_catalog(["alpha item"], cache_root=tmp_path)
    for shard in (tmp_path / text_encoder.CACHE_DIR).rglob("*.npz"):
        shard.write_bytes(b"not an npz")
    np.testing.assert_allclose(encode_catalog(["alpha item"], cache_root=tmp_path), first, atol=1e-6)
