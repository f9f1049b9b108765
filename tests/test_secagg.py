"""Specification of shared/secagg.py and shared/secagg_masks.py: fedrec's parts inside Flower's SecAgg+."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from cryptography.fernet import Fernet
from flwr.common.secure_aggregation.crypto import shamir as flower_shamir
from flwr.common.secure_aggregation.crypto import symmetric_encryption as flower_symmetric
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen as flower_prg
from flwr.supercore.primitives import asymmetric as flower_asymmetric

from shared import secagg, secagg_keys, secagg_masks, shamir

# The modules themselves (the attribute ``...secure_aggregation.secaggplus_mod`` is the function).
secaggplus_mod = importlib.import_module(secagg.CLIENT_MOD_MODULE)
secaggplus_workflow = importlib.import_module(secagg.SERVER_WORKFLOW_MODULE)
FLOWERS = {"create_shares": flower_shamir.create_shares, "combine_shares": flower_shamir.combine_shares,
           "pseudo_rand_gen": flower_prg, "generate_shared_key": flower_symmetric.generate_shared_key,
           **{name: getattr(flower_asymmetric, name) for name in secagg.CLIENT_KEY_FUNCTIONS
              if name != "generate_shared_key"}}
SHAPES = [(3, 4), (5,), ()]


def _as_flower_ships_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for module_name, name, _ in secagg.replacements():
        monkeypatch.setattr(importlib.import_module(module_name), name, FLOWERS[name])


# -- the masks -----------------------------------------------------------------------------------------------

def test_masks_have_flowers_shapes_and_types_and_are_determined_by_the_seed() -> None:
    seed = bytes(range(32))
    masks = secagg_masks.pseudo_rand_gen(seed, 2**22, SHAPES)
    assert [m.shape for m in masks] == [m.shape for m in flower_prg(seed, 2**22, SHAPES)] == SHAPES
    assert all(m.dtype == np.int64 for m in masks)
    again = secagg_masks.pseudo_rand_gen(seed, 2**22, SHAPES)
    assert all(np.array_equal(a, b) for a, b in zip(masks, again, strict=True))
    other = secagg_masks.pseudo_rand_gen(bytes(range(1, 33)), 2**22, SHAPES)
    assert not np.array_equal(masks[0], other[0])


def test_masks_are_uniform_over_the_whole_range() -> None:
    num_range = 2**20
    values = secagg_masks.pseudo_rand_gen(b"s" * 32, num_range, [(200_000,)])[0]
    assert values.min() >= 0 and values.max() < num_range
    counts = np.bincount(values * 16 // num_range, minlength=16)  # 16 equal bins
    chi2 = float(((counts - len(values) / 16) ** 2 / (len(values) / 16)).sum())
    assert chi2 < 37.7  # the 0.001 tail of chi-square with 15 degrees of freedom


def test_every_bit_of_the_seed_matters_unlike_flowers_32_bit_fold() -> None:
    # Flower XOR-folds the seed's eight 4-byte words into 32 bits: swapping two words gives the same masks.
    seed = bytes(range(32))
    swapped = seed[4:8] + seed[:4] + seed[8:]
    assert all(np.array_equal(a, b) for a, b in zip(flower_prg(seed, 2**22, SHAPES),
                                                    flower_prg(swapped, 2**22, SHAPES), strict=True))
    ours, theirs = (secagg_masks.pseudo_rand_gen(s, 2**22, SHAPES)[0] for s in (seed, swapped))
    assert not np.array_equal(ours, theirs)


def test_masks_cancel_in_a_sum_as_secagg_needs() -> None:
    # Two stores add and subtract the same pairwise mask; the sum modulo the range is the plain sum.
    num_range = 2**22
    a, b = np.arange(12).reshape(3, 4), np.full((3, 4), 7)
    pair = secagg_masks.pseudo_rand_gen(b"pair" * 8, num_range, [(3, 4)])[0]
    assert np.array_equal(((a + pair) % num_range + (b - pair) % num_range) % num_range, a + b)


def test_a_range_flower_cannot_use_is_refused() -> None:
    with pytest.raises(ValueError, match="num_range"):
        secagg_masks.pseudo_rand_gen(b"x" * 32, 2**33, SHAPES)


# -- the key agreement --------------------------------------------------------------------------------------

def test_both_ends_derive_the_same_fernet_key_and_other_pairs_do_not() -> None:
    (sk_a, pk_a), (sk_b, pk_b), (_, pk_c) = (secagg_keys.generate_key_pairs() for _ in range(3))
    a_with_b = secagg_keys.generate_shared_key(sk_a, pk_b)
    assert a_with_b == secagg_keys.generate_shared_key(sk_b, pk_a)
    assert a_with_b != secagg_keys.generate_shared_key(sk_a, pk_c)
    assert Fernet(secagg_keys.generate_shared_key(sk_b, pk_a)).decrypt(Fernet(a_with_b).encrypt(b"share")) \
        == b"share"


def test_a_dropped_stores_key_rebuilt_from_shares_gives_the_server_its_pairwise_key() -> None:
    # What the server does at unmasking for a store that dropped out: recombine the store's first private key
    # from its neighbours' shares, load it, and derive the pairwise masks' seed with each survivor.
    sk_dropped, _ = secagg_keys.generate_key_pairs()
    _, pk_survivor = secagg_keys.generate_key_pairs()
    secret = secagg_keys.private_key_to_bytes(sk_dropped)
    assert len(secret) == secagg_keys.KEY_BYTES
    rebuilt = shamir.combine_shares(shamir.create_shares(secret, 3, 5)[1:4])
    wire_pk = secagg_keys.public_key_to_bytes(pk_survivor)
    assert secagg_keys.generate_shared_key(secagg_keys.bytes_to_private_key(rebuilt),
                                           secagg_keys.bytes_to_public_key(wire_pk)) \
        == secagg_keys.generate_shared_key(sk_dropped, pk_survivor)


def test_a_peer_on_flowers_pem_keys_is_refused_saying_so() -> None:
    flower_pem = flower_asymmetric.public_key_to_bytes(flower_asymmetric.generate_key_pairs()[1])
    with pytest.raises(ValueError, match="Flower's own P-384"):
        secagg_keys.bytes_to_public_key(flower_pem)
    with pytest.raises(ValueError, match="32 raw X25519 bytes, got 31"):
        secagg_keys.bytes_to_private_key(bytes(31))


# -- installing into Flower ----------------------------------------------------------------------------------

def test_install_points_flowers_secagg_at_fedrecs_functions_once(monkeypatch: pytest.MonkeyPatch) -> None:
    _as_flower_ships_it(monkeypatch)
    secagg.install()
    assert secaggplus_mod.create_shares is shamir.create_shares
    assert secaggplus_workflow.combine_shares is shamir.combine_shares
    assert secaggplus_mod.pseudo_rand_gen is secagg_masks.pseudo_rand_gen
    assert secaggplus_workflow.pseudo_rand_gen is secagg_masks.pseudo_rand_gen
    for name in secagg.CLIENT_KEY_FUNCTIONS:
        assert getattr(secaggplus_mod, name) is getattr(secagg_keys, name)
    for name in secagg.SERVER_KEY_FUNCTIONS:
        assert getattr(secaggplus_workflow, name) is getattr(secagg_keys, name)
    secagg.install()  # idempotent
    assert secaggplus_mod.create_shares is shamir.create_shares


@pytest.mark.parametrize("module_name, name", [(m, n) for m, n, _ in secagg.replacements()])
def test_install_fails_loudly_if_flowers_layout_changed(monkeypatch: pytest.MonkeyPatch, module_name: str,
                                                       name: str) -> None:
    monkeypatch.delattr(importlib.import_module(module_name), name)
    with pytest.raises(RuntimeError, match=f"{name} is missing"):
        secagg.install()


def test_a_secagg_round_uses_fedrecs_shares_and_masks_and_sums_right(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # The whole path, starting from Flower's own functions: fedrec's ClientApp installs them before its
    # SecAgg+ mod runs, the ServerApp before its workflow. If only one side expanded masks the new way, the
    # masks would not cancel and the run's model would differ from the same run without SecAgg+.
    from client.app import build_client_app
    from tests.conftest import TINY_STORES, tiny_config, write_tiny_dataset
    from tests.inprocess import run_in_process

    calls = {"create": 0, "combine": 0, "masks": 0, "agree": 0}
    real_create, real_combine = shamir.create_shares, shamir.combine_shares
    real_masks, real_agree = secagg_masks.pseudo_rand_gen, secagg_keys.generate_shared_key

    def counting_create(secret: bytes, threshold: int, num: int) -> list[bytes]:
        calls["create"] += 1
        return real_create(secret, threshold, num)

    def counting_combine(share_list: Sequence[bytes]) -> bytes:
        calls["combine"] += 1
        return real_combine(share_list)

    def counting_masks(seed: bytes, num_range: int, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
        calls["masks"] += 1
        return real_masks(seed, num_range, shapes)

    def counting_agree(private_key: object, public_key: object) -> bytes:
        calls["agree"] += 1
        return real_agree(private_key, public_key)  # type: ignore[arg-type]

    monkeypatch.setattr(shamir, "create_shares", counting_create)
    monkeypatch.setattr(secagg_keys, "generate_shared_key", counting_agree)
    monkeypatch.setattr(shamir, "combine_shares", counting_combine)
    monkeypatch.setattr(secagg_masks, "pseudo_rand_gen", counting_masks)
    _as_flower_ships_it(monkeypatch)
    stores = len(TINY_STORES)
    data = write_tiny_dataset(tmp_path / "data")
    summaries = {}
    for secure in (True, False):
        config = tiny_config(data, run_dir=str(tmp_path / f"run-{secure}"), num_rounds=1, secagg=secure,
                             secagg_num_shares=stores, secagg_reconstruction_threshold=stores - 1)
        summaries[secure], _ = run_in_process(config, build_client_app(config), stores)
    assert summaries[True]["status"] == "completed"
    assert calls["create"] == 2 * stores  # each store shares its mask seed and its private key
    assert calls["combine"] == stores  # one secret per store recombined by the server
    # each store: its private mask and one per neighbour; the server: each survivor's private mask
    assert calls["masks"] == stores * stores + stores
    # each store with each neighbour: once for the shares it sends, once for their pairwise mask
    assert calls["agree"] == 2 * stores * (stores - 1)
    assert summaries[True]["hr@10"] == pytest.approx(summaries[False]["hr@10"], abs=0.02)
