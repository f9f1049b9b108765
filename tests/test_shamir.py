"""Specification of shared/shamir.py: the same Shamir shares as Flower's SecAgg+ (pycryptodome), faster.

Interchangeability is checked both ways against Flower's own functions, so a SecAgg+ round works whichever
side runs which implementation; tests/test_secagg.py checks that a SecAgg+ round uses it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random

import pytest
from Crypto.Protocol.SecretSharing import _Element
from flwr.common.secure_aggregation.crypto import shamir as flower_shamir

from shared import shamir

EDGE_VALUES = [0, 1, 2, 3, 0x87, 1 << 127, (1 << 128) - 1, (1 << 127) | 1]


def _random_values(count: int) -> list[int]:
    rng = random.Random(7)
    return [rng.getrandbits(rng.choice([4, 64, 127, 128])) for _ in range(count)]


@pytest.mark.parametrize("a, b", list(itertools.product(EDGE_VALUES, repeat=2))
                         + list(zip(_random_values(200), _random_values(200)[::-1], strict=True)))
def test_multiplication_is_pycryptodomes(a: int, b: int) -> None:
    assert shamir.gf_multiply(a, b) == int(_Element(a) * _Element(b))


@pytest.mark.parametrize("a", [v for v in EDGE_VALUES + _random_values(100) if v])
def test_inverse_is_pycryptodomes_and_inverts(a: int) -> None:
    inverse = shamir.gf_inverse(a)
    assert inverse == int(_Element(a).inverse())
    assert shamir.gf_multiply(a, inverse) == 1


def test_zero_has_no_inverse() -> None:
    with pytest.raises(ValueError, match="zero"):
        shamir.gf_inverse(0)


def test_lagrange_weights_recover_a_polynomials_constant_term() -> None:
    rng = random.Random(3)
    coefficients = [rng.getrandbits(128) for _ in range(4)]  # degree 3, constant term coefficients[-1]

    def f(x: int) -> int:
        value = 0
        for c in coefficients:
            value = shamir.gf_multiply(value, x) ^ c
        return value

    for holders in ([1, 2, 3, 4], [2, 5, 7, 11], [1, 3, 4, 6, 9]):  # exactly enough, and one more
        weights = shamir.lagrange_at_zero(holders)
        recovered = 0
        for weight, x in zip(weights, holders, strict=True):
            recovered ^= shamir.gf_multiply(weight, f(x))
        assert recovered == coefficients[-1]


SECRET_SIZES = [0, 1, 15, 16, 17, 32, 241]  # 32: SecAgg+'s seed; 241: its PEM-encoded P-384 key


@pytest.mark.parametrize("size", SECRET_SIZES)
def test_flower_recombines_our_shares_from_any_threshold_subset(size: int) -> None:
    secret = os.urandom(size)
    shares = shamir.create_shares(secret, threshold=3, num=5)
    for subset in itertools.combinations(shares, 3):
        assert flower_shamir.combine_shares(list(subset)) == secret
    assert flower_shamir.combine_shares(shares) == secret


@pytest.mark.parametrize("size", SECRET_SIZES)
def test_we_recombine_flowers_shares_exactly_as_flower_does(size: int) -> None:
    secret = os.urandom(size)
    shares = flower_shamir.create_shares(secret, 4, 7)
    rng = random.Random(size)
    for _ in range(5):
        subset = rng.sample(shares, rng.choice([4, 5, 7]))
        assert shamir.combine_shares(subset) == flower_shamir.combine_shares(subset) == secret


def test_share_layout_is_flowers_index_then_one_block_per_chunk() -> None:
    secret = os.urandom(20)  # pads to two 16-byte chunks
    shares = shamir.create_shares(secret, 2, 3)
    assert [int.from_bytes(s[:4], "little") for s in shares] == [1, 2, 3]
    flowers = flower_shamir.create_shares(secret, 2, 3)
    assert {len(s) for s in shares} == {4 + 2 * 16} == {len(s) for s in flowers}


def test_shares_are_fresh_random_each_time_and_too_few_do_not_reveal_the_secret() -> None:
    secret = os.urandom(32)
    first, second = shamir.create_shares(secret, 3, 5), shamir.create_shares(secret, 3, 5)
    assert all(a != b for a, b in zip(first, second, strict=True))
    for subset in itertools.combinations(first, 2):
        with contextlib.suppress(ValueError):  # the wrong polynomial usually fails the padding check
            assert shamir.combine_shares(list(subset)) != secret


def test_bad_share_lists_are_refused() -> None:
    shares = shamir.create_shares(b"secret", 2, 3)
    with pytest.raises(ValueError, match="Duplicate share"):
        shamir.combine_shares([shares[0], shares[0]])
    with pytest.raises(ValueError, match="lengths"):
        shamir.combine_shares([shares[0], shares[1][:-1]])
    with pytest.raises(ValueError, match="no shares"):
        shamir.combine_shares([])
    with pytest.raises(ValueError, match="threshold"):
        shamir.create_shares(b"secret", 4, 3)


def test_the_speed_benchmark_runs_and_checks_both_sides() -> None:
    from simulations.benchmarks.shamir_speed import main

    result = main(["--repeats", "1", "--shares", "3", "--threshold", "2"])
    for secret in ("mask_seed", "private_key"):
        assert {"flower_split_ms", "fedrec_split_ms", "flower_combine_ms", "fedrec_combine_ms"} <= set(
            result[secret])
    assert result["mask_seed"]["bytes"] == 32 and result["private_key"]["bytes"] > 200
