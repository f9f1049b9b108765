"""Shamir secret sharing for Flower's SecAgg+: the same shares, split ~10× and recombined ~25-45× faster.

Why: in a SecAgg+ round every store splits two secrets among its neighbours and the server recombines one per
store. Flower 1.41 does both with pycryptodome's ``Shamir``, whose GF(2^128) multiplication builds 128-bit
masks through strings, bit by bit, and which recomputes every Lagrange coefficient, field inverse included,
for every 16-byte chunk. py-spy of a 50-store round (docs/results.md, "Speed"): the server's recombination
was ~2.6 s of a 8.8 s round and the stores' splitting ~27 % of their busy time. Measured by
``simulations/benchmarks/shamir_speed.py``.

This module computes the *same* field arithmetic (GF(2^128) with pycryptodome's modulus
x^128 + x^7 + x^2 + x + 1, elements as big-endian 16-byte strings, no "ssss" diffusion), so its shares and
pycryptodome's are interchangeable, with carry-less multiplication on Python integers, one field inverse per
share-holder set (batched) and no thread pool per secret. The byte layout is Flower's
(``flwr.common.secure_aggregation.crypto.shamir``): PKCS#7-padded secret in 16-byte chunks; a share is the
holder's index (4 bytes, little endian) followed by its share of each chunk. Random coefficients come from the
OS CSPRNG (``secrets``), as pycryptodome's do.

``shared/secagg.py`` installs these two functions into Flower's SecAgg+ client mod and server workflow.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from Crypto.Util.Padding import pad, unpad

CHUNK_BYTES = 16
INDEX_BYTES = 4
FIELD_BITS = 128
MASK = (1 << FIELD_BITS) - 1
REDUCTION = 0b1000_0111  # x^128 = x^7 + x^2 + x + 1 in GF(2^128) (pycryptodome's modulus)
MODULUS = (1 << FIELD_BITS) | REDUCTION


def _reduce_once(high: int) -> int:
    """``high · x^128`` reduced by one application of x^128 = x^7 + x^2 + x + 1 (may leave 7 bits over)."""
    return high ^ (high << 1) ^ (high << 2) ^ (high << 7)


def gf_multiply(a: int, b: int) -> int:
    """a · b in GF(2^128): carry-less product over the set bits of the smaller factor, then reduction."""
    if a < b:
        a, b = b, a
    product = 0
    while b:
        lowest = b & -b
        product ^= a * lowest  # a shifted to the bit's position: multiplication by a power of two
        b ^= lowest
    folded = (product & MASK) ^ _reduce_once(product >> FIELD_BITS)
    return (folded & MASK) ^ _reduce_once(folded >> FIELD_BITS)


def gf_inverse(a: int) -> int:
    """The inverse of a non-zero element (extended Euclid over GF(2)[x], Hankerson et al., Alg. 2.48)."""
    if a == 0:
        raise ValueError("Inversion of zero")
    u, v = a, MODULUS
    g1, g2 = 1, 0
    while u != 1:
        shift = u.bit_length() - v.bit_length()
        if shift < 0:
            u, v, g1, g2 = v, u, g2, g1
            shift = -shift
        u ^= v << shift
        g1 ^= g2 << shift
    return g1


def lagrange_at_zero(indices: Sequence[int]) -> list[int]:
    """λ_j with f(0) = Σ λ_j f(x_j): λ_j = Π_{m≠j} x_m / (x_j + x_m) (minus is plus in characteristic 2).

    One field inverse for all the denominators (Montgomery's batch trick), since an inverse costs as much as
    a hundred products.
    """
    numerators, denominators = [], []
    for j, x_j in enumerate(indices):
        numerator, denominator = 1, 1
        for m, x_m in enumerate(indices):
            if m != j:
                numerator = gf_multiply(numerator, x_m)
                denominator = gf_multiply(denominator, x_j ^ x_m)
        numerators.append(numerator)
        denominators.append(denominator)
    prefix = [1]
    for denominator in denominators:
        prefix.append(gf_multiply(prefix[-1], denominator))
    inverse = gf_inverse(prefix[-1])
    weights = [0] * len(indices)
    for j in range(len(indices) - 1, -1, -1):
        weights[j] = gf_multiply(numerators[j], gf_multiply(inverse, prefix[j]))
        inverse = gf_multiply(inverse, denominators[j])
    return weights


def create_shares(secret: bytes, threshold: int, num: int) -> list[bytes]:
    """``num`` shares of ``secret``, any ``threshold`` of which recover it (Flower's format, see above)."""
    if not 1 <= threshold <= num:
        raise ValueError(f"threshold must be in [1, num]; got threshold={threshold}, num={num}")
    padded = pad(secret, CHUNK_BYTES)
    shares = [bytearray(index.to_bytes(INDEX_BYTES, "little", signed=False)) for index in range(1, num + 1)]
    for start in range(0, len(padded), CHUNK_BYTES):
        # f(x) = c_1 x^(t-1) + ... + c_(t-1) x + chunk, evaluated by Horner's rule as pycryptodome does.
        coefficients = [int.from_bytes(secrets.token_bytes(CHUNK_BYTES), "big") for _ in range(threshold - 1)]
        coefficients.append(int.from_bytes(padded[start:start + CHUNK_BYTES], "big"))
        for index, share in enumerate(shares, start=1):
            value = 0
            for coefficient in coefficients:
                value = gf_multiply(value, index) ^ coefficient
            share += value.to_bytes(CHUNK_BYTES, "big")
    return [bytes(share) for share in shares]


def combine_shares(share_list: Sequence[bytes]) -> bytes:
    """The secret from shares made by ``create_shares`` (or Flower's own); ValueError if they disagree."""
    if not share_list:
        raise ValueError("Failed to combine shares: no shares")
    length = len(share_list[0])
    if length < INDEX_BYTES + CHUNK_BYTES or (length - INDEX_BYTES) % CHUNK_BYTES or any(
            len(share) != length for share in share_list):
        raise ValueError("Failed to combine shares: shares of different or invalid lengths")
    indices = [int.from_bytes(share[:INDEX_BYTES], "little", signed=False) for share in share_list]
    if len(set(indices)) != len(indices):
        raise ValueError("Duplicate share")
    if 0 in indices:
        raise ValueError("Failed to combine shares: share index 0")
    weights = lagrange_at_zero(indices)
    secret = bytearray()
    for start in range(INDEX_BYTES, length, CHUNK_BYTES):
        value = 0
        for weight, share in zip(weights, share_list, strict=True):
            value ^= gf_multiply(weight, int.from_bytes(share[start:start + CHUNK_BYTES], "big"))
        secret += value.to_bytes(CHUNK_BYTES, "big")
    try:
        return unpad(bytes(secret), CHUNK_BYTES)
    except ValueError:
        raise ValueError("Failed to combine shares") from None
