"""Specification of shared/wire.py: the shared parameters travel as one vector and come back exactly."""

from __future__ import annotations

import numpy as np
import pytest

from shared.model import ModelShape, NeuMF, get_shared, shared_parameter_shapes
from shared.wire import WireFormatError, pack, unpack

SHAPES = [(3, 2), (4,), (1, 1)]


def arrays() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.normal(size=shape).astype(np.float32) for shape in SHAPES]


def test_round_trip_is_exact_and_keeps_the_dtype() -> None:
    packed = pack(arrays())
    assert len(packed) == 1 and packed[0].shape == (11,) and packed[0].dtype == np.float32
    for got, want in zip(unpack(packed, SHAPES), arrays(), strict=True):
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_a_neumf_model_travels_as_one_array() -> None:
    model = NeuMF(5, ModelShape(n_items=30, gmf_dim=4, mlp_dim=8, hidden=(16, 8)))
    shared = get_shared(model)
    assert len(shared) > 5  # several parameter arrays ...
    assert len(pack(shared)) == 1  # ... one array on the wire
    for got, want in zip(unpack(pack(shared), shared_parameter_shapes(model)), shared, strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_vector_of_the_wrong_size_is_refused_naming_both_sizes() -> None:
    with pytest.raises(WireFormatError, match=r"10 values.*need 11"):
        unpack([np.zeros(10)], SHAPES)


def test_an_unpacked_message_is_refused() -> None:
    with pytest.raises(WireFormatError, match=r"one packed vector.*got 3 array\(s\)"):
        unpack(arrays(), SHAPES)


def test_no_arrays_pack_to_an_empty_vector() -> None:
    assert unpack(pack([]), []) == []
