"""Specification of shared/model.py: NeuMF and the one declaration of its private parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shared.model import (
    CPU_SCORE_CHUNK_USERS,
    PRIVATE_PARAMETERS,
    ModelShape,
    NeuMF,
    get_shared,
    initial_shared,
    is_private,
    private_shapes,
    set_shared,
    shared_names,
    shared_shapes,
)

SHAPE = ModelShape(n_items=50, gmf_dim=4, mlp_dim=8, hidden=(16, 8))
N_USERS = 7


def model(seed: int) -> NeuMF:
    torch.manual_seed(seed)
    return NeuMF(N_USERS, SHAPE)


def test_private_parameters_are_exactly_the_user_embeddings() -> None:
    params = dict(model(0).named_parameters())
    per_user = {name for name, p in params.items() if p.shape[0] == N_USERS}
    assert set(PRIVATE_PARAMETERS) == per_user == {"gmf_user.weight", "mlp_user.weight"}
    assert [is_private(name) for name in params].count(True) == 2


def test_shared_names_are_every_other_parameter_in_module_order() -> None:
    assert shared_names(model(0)) == ["gmf_item.weight", "mlp_item.weight", "mlp.0.weight", "mlp.0.bias",
                                      "mlp.2.weight", "mlp.2.bias", "out.weight", "out.bias"]


def test_shared_shapes_do_not_depend_on_the_number_of_users() -> None:
    assert [a.shape for a in get_shared(model(0))] == shared_shapes(SHAPE)
    assert shared_shapes(SHAPE) == [(50, 4), (50, 8), (16, 16), (16,), (8, 16), (8,), (1, 12), (1,)]
    assert private_shapes(N_USERS, SHAPE) == [(7, 4), (7, 8)]


def test_set_shared_round_trip_copies_shared_and_leaves_private_untouched() -> None:
    source, target = model(1), model(2)
    private_before = {n: p.detach().clone() for n, p in target.named_parameters() if is_private(n)}
    set_shared(target, get_shared(source))
    for got, want in zip(get_shared(target), get_shared(source), strict=True):
        np.testing.assert_array_equal(got, want)
    for name, p in target.named_parameters():
        if is_private(name):
            assert torch.equal(p, private_before[name])


def test_get_shared_returns_copies() -> None:
    net = model(0)
    arrays = get_shared(net)
    arrays[0][:] = 123.0
    assert not np.any(get_shared(net)[0] == 123.0)


def test_set_shared_rejects_a_wrong_count() -> None:
    arrays = get_shared(model(0))
    with pytest.raises(ValueError, match=r"expected 8 shared arrays .* got 7"):
        set_shared(model(0), arrays[:-1])


def test_set_shared_rejects_a_wrong_shape_naming_the_parameter() -> None:
    arrays = get_shared(model(0))
    arrays[2] = np.zeros((16, 15), dtype=np.float32)
    with pytest.raises(ValueError, match=r"shared parameter mlp\.0\.weight: shape \(16, 15\)"):
        set_shared(model(0), arrays)


def test_initial_shared_is_deterministic_for_a_seed() -> None:
    first, again, other = initial_shared(SHAPE, 3), initial_shared(SHAPE, 3), initial_shared(SHAPE, 4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], other[0])


def test_forward_broadcasts_users_against_items() -> None:
    net = model(0)
    scores = net.score_all_items(torch.tensor([0, 3]))
    assert scores.shape == (2, 50)
    torch.testing.assert_close(scores[1, 7], net(torch.tensor([3]), torch.tensor([7]))[0])


@pytest.mark.parametrize("tower", ["id", "text", "hybrid"])
@pytest.mark.parametrize("n_users", [N_USERS, 2 * CPU_SCORE_CHUNK_USERS + 3])  # one chunk; several, a partial
def test_score_all_items_equals_forward_on_every_pair(tower: str, n_users: int) -> None:
    shape = ModelShape(n_items=50, gmf_dim=4, mlp_dim=8, hidden=(16, 8), item_tower=tower,
                       feature_dim=0 if tower == "id" else 12)
    torch.manual_seed(0)
    features = None if tower == "id" else torch.randn(50, 12)
    model = NeuMF(n_users, shape, features).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.5)
    users = torch.arange(n_users)
    with torch.no_grad():
        expected = model(users[:, None], torch.arange(50)[None, :])
    torch.testing.assert_close(model.score_all_items(users), expected, rtol=1e-5, atol=1e-5)
    assert model.score_all_items(users[:0]).shape == (0, 50)


@pytest.mark.parametrize("tower", ["id", "text", "hybrid"])
def test_frozen_item_vectors_train_users_exactly_like_the_live_ones(tower: str) -> None:
    shape = ModelShape(n_items=50, gmf_dim=4, mlp_dim=8, hidden=(16, 8), item_tower=tower,
                       feature_dim=0 if tower == "id" else 12)
    features = torch.randn(50, 12, generator=torch.Generator().manual_seed(2))
    users, items = torch.tensor([0, 1, 2, 3, 0, 5]), torch.tensor([3, 9, 9, 40, 7, 1])
    trained = []
    for frozen in (False, True):
        torch.manual_seed(3)
        net = NeuMF(N_USERS, shape, None if tower == "id" else features)
        for name, p in net.named_parameters():
            p.requires_grad_(is_private(name))
        optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.5)
        with net.frozen_item_vectors() if frozen else torch.enable_grad():
            for _ in range(3):
                optimizer.zero_grad()
                net(users, items).sigmoid().sum().backward()
                optimizer.step()
        trained.append(torch.cat([net.gmf_user.weight, net.mlp_user.weight], dim=1).detach())
        assert net._frozen_items is None  # the cache ends with the block
    torch.testing.assert_close(trained[0], trained[1])
