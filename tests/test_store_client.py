"""Specification of client/store.py + client/state.py without a Flower runtime (privacy = none)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import client.store as store_module
from client.state import EMBEDDINGS_FILE, LEDGER_FILE, StoreState
from client.store import StoreClient, store_data
from shared.config import RunConfig
from shared.ledger import LedgerError
from shared.model import PRIVATE_PARAMETERS, ModelShape, initial_shared, private_shapes, shared_shapes
from shared.wire import pack, packed_length, unpack

STORE = 1
STORE_USERS = 10  # the tiny data puts every third user in each of its 3 stores


def store_client(config: RunConfig, state_dir: Path) -> StoreClient:
    return StoreClient(config, STORE, store_data(config, STORE), state_dir)


def global_parameters(config: RunConfig) -> list[np.ndarray]:
    """As the server sends them: packed into one vector."""
    return pack(initial_shared(ModelShape.from_config(config, 120), config.seed))


def sent_arrays(config: RunConfig, sent: list[np.ndarray]) -> list[np.ndarray]:
    return unpack(sent, shared_shapes(ModelShape.from_config(config, 120)))


def test_fit_returns_exactly_the_shared_shapes(make_config: Callable[..., RunConfig], tmp_path: Path) -> None:
    config = make_config()
    client = store_client(config, tmp_path / "state")
    sent, weight, metrics = client.fit(global_parameters(config), {"round": 1})
    shapes = shared_shapes(ModelShape.from_config(config, 120))
    assert [a.shape for a in sent] == [(packed_length(shapes),)]  # one vector, nothing else
    assert [a.shape for a in sent_arrays(config, sent)] == shapes
    assert weight == 80                                    # 10 users x (10 - valid - test) train interactions
    assert metrics["store"] == STORE and metrics["epsilon"] == 0.0
    assert np.isfinite(metrics["loss"])


def test_fit_sends_no_private_tensor(make_config: Callable[..., RunConfig], tmp_path: Path) -> None:
    config = make_config()
    sent, _, _ = store_client(config, tmp_path / "state").fit(global_parameters(config), {"round": 1})
    arrays = sent_arrays(config, sent)
    state = StoreState.load(tmp_path / "state", store_data(config, STORE).user_ids, config.delta)
    assert state.embeddings is not None
    private = list(state.embeddings.values())
    assert [p.shape for p in private] == private_shapes(STORE_USERS, ModelShape.from_config(config, 120))
    for array in [*arrays, *sent]:  # the pieces, and the vector that carries them
        assert array.shape not in {p.shape for p in private}
        assert not any(array.size == p.size and np.allclose(array.ravel(), p.ravel()) for p in private)


def test_fit_sends_a_delta_not_the_model(make_config: Callable[..., RunConfig], tmp_path: Path) -> None:
    config = make_config(learning_rate=1e-9)  # ~7 Adam steps of size ~1e-9: the model barely moves
    sent, _, _ = store_client(config, tmp_path / "state").fit(global_parameters(config), {"round": 1})
    assert max(float(np.abs(a).max()) for a in sent_arrays(config, sent)) < 1e-7
    assert float(np.abs(global_parameters(config)[0]).max()) > 1e-3  # while the weights themselves are not


def test_user_embeddings_are_saved_in_the_state_dir(make_config: Callable[..., RunConfig],
                                                     tmp_path: Path) -> None:
    config = make_config()
    store_client(config, tmp_path / "state").fit(global_parameters(config), {"round": 1})
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == sorted([EMBEDDINGS_FILE, LEDGER_FILE])
    with np.load(tmp_path / "state" / EMBEDDINGS_FILE) as saved:
        assert sorted(saved.files) == ["gmf_user", "mlp_user", "user_ids"]
        assert saved["user_ids"].tolist() == [str(u) for u in range(STORE, 30, 3)]
        assert saved["gmf_user"].shape == (STORE_USERS, 4) and saved["mlp_user"].shape == (STORE_USERS, 8)


def test_next_round_trains_from_the_saved_embeddings(make_config: Callable[..., RunConfig], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config()
    client = store_client(config, tmp_path / "state")
    client.fit(global_parameters(config), {"round": 1})
    with np.load(tmp_path / "state" / EMBEDDINGS_FILE) as saved:
        after_round_1 = {name: saved[name.split(".")[0]] for name in PRIVATE_PARAMETERS}
    seen: dict[str, np.ndarray] = {}
    real_train_store = store_module.train_store

    def spy(model: Any, *args: Any, **kwargs: Any) -> Any:
        params = dict(model.named_parameters())
        seen.update({name: params[name].detach().cpu().numpy().copy() for name in PRIVATE_PARAMETERS})
        return real_train_store(model, *args, **kwargs)

    monkeypatch.setattr(store_module, "train_store", spy)
    store_client(config, tmp_path / "state").fit(global_parameters(config), {"round": 2})  # a fresh process
    for name in PRIVATE_PARAMETERS:
        np.testing.assert_array_equal(seen[name], after_round_1[name])


def test_embeddings_of_other_users_are_refused(make_config: Callable[..., RunConfig], tmp_path: Path) -> None:
    config = make_config()
    store_client(config, tmp_path / "state").fit(global_parameters(config), {"round": 1})
    other = StoreClient(config, 0, store_data(config, 0), tmp_path / "state")
    with pytest.raises(ValueError, match="belong to other users"):
        other.fit(global_parameters(config), {"round": 2})


def test_evaluate_returns_valid_and_test_sums_with_the_user_count(make_config: Callable[..., RunConfig],
                                                                  tmp_path: Path) -> None:
    config = make_config()
    client = store_client(config, tmp_path / "state")
    client.fit(global_parameters(config), {"round": 1})
    loss, users, metrics = client.evaluate(global_parameters(config), {"round": 1})
    assert loss == 0.0 and users == STORE_USERS
    expected = {"users", "hr@10", "ndcg@10", "auc", "hr@10_full", "ndcg@10_full", "recall@20_full",
                "precision@10_full"}
    assert set(metrics) == {"store"} | {f"{prefix}/{key}" for prefix in ("valid", "test") for key in expected}
    assert metrics["store"] == STORE  # the server sums the stores' metrics in store order
    assert metrics["test/users"] == metrics["valid/users"] == STORE_USERS
    for prefix in ("valid", "test"):
        assert 0.0 <= metrics[f"{prefix}/hr@10"] <= STORE_USERS      # sums, not means
        assert 0.0 <= metrics[f"{prefix}/auc"] <= STORE_USERS


def test_state_dir_falls_back_to_the_run_dir(make_config: Callable[..., RunConfig], tmp_path: Path) -> None:
    config = make_config()
    client = StoreClient(config, STORE, store_data(config, STORE), None)
    client.fit(global_parameters(config), {"round": 1, "run-dir": str(tmp_path / "run")})
    assert (tmp_path / "run" / "stores" / f"store-{STORE}" / EMBEDDINGS_FILE).exists()


def test_a_store_never_sends_its_whole_parameters(make_config: Callable[..., RunConfig],
                                                   tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="server owns the initial shared parameters"):
        store_client(make_config(), tmp_path / "state").get_parameters({})


@pytest.mark.parametrize(("contents", "message"), [
    ('{"delta": 1e-05, "entries": [{"round": 1', "refusing to start from zero"),       # truncated JSON
    ('{"delta": 1e-05, "entries": [{"round": 1}]}', "not a valid privacy ledger"),     # entry without σ, q
])
def test_a_ledger_file_that_does_not_parse_is_an_error_never_a_fresh_ledger(tmp_path: Path, contents: str,
                                                                            message: str) -> None:
    (tmp_path / LEDGER_FILE).write_text(contents)
    with pytest.raises(LedgerError, match=message):
        StoreState.load(tmp_path, np.array(["1", "4"]), 1e-5)
    assert (tmp_path / LEDGER_FILE).read_text() == contents  # left for a person to look at
