"""End to end through the real Flower apps on Ray (slow): a 2-round run, its resume to round 3, and a walk of
every message the stores sent, none of which may carry a private tensor."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message
from flwr.client import Client, ClientApp
from flwr.clientapp.typing import ClientAppCallable

import client.app as client_app_module
from shared.config import RunConfig
from shared.model import ModelShape, private_shapes, shared_shapes
from shared.wire import packed_length
from shared.workload import number_of_stores, users_of_store
from simulations.simulate import simulate

pytestmark = pytest.mark.slow


def spy_mod(out_dir: str) -> Callable[[Message, Context, ClientAppCallable], Message]:
    """A ClientApp mod (outermost, so it sees the reply as sent) that writes every reply's array shapes."""

    def record_reply(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        reply = call_next(msg, context)
        arrays: list[list[int]] = []
        if reply.has_content():
            for record in reply.content.array_records.values():
                arrays += [list(array.numpy().shape) for array in record.values()]
        entry = {"type": msg.metadata.message_type, "partition": int(context.node_config["partition-id"]),
                 "arrays": arrays, "error": reply.has_error()}
        Path(out_dir, f"{os.getpid()}-{uuid.uuid4().hex}.json").write_text(json.dumps(entry))
        return reply

    return record_reply


def spying_client_app(out_dir: Path) -> Callable[[RunConfig | None], ClientApp]:
    """A stand-in for ``build_client_app``: the same client and mods, with the spy outermost."""

    def build(config: RunConfig | None = None) -> ClientApp:
        def client_fn(context: Context) -> Client:
            return client_app_module.client_fn(context, config)

        return ClientApp(client_fn=client_fn,
                         mods=[spy_mod(str(out_dir)),
                               partial(client_app_module.secagg_when_requested, config=config)])

    return build


def rounds_in(run_dir: Path) -> list[int]:
    return [entry["round"] for entry in json.loads((run_dir / "metrics.json").read_text())]


def test_two_rounds_then_resume_to_three_without_sending_private_tensors(
        make_config: Callable[..., RunConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir, spy_dir = tmp_path / "run", tmp_path / "replies"
    spy_dir.mkdir()
    monkeypatch.setattr(client_app_module, "build_client_app", spying_client_app(spy_dir))
    config = make_config(num_rounds=2, run_dir=str(run_dir))

    summary = simulate(config)

    assert {"hr@10", "ndcg@10", "hr@10_full", "ndcg@10_full", "rounds", "clients", "seconds",
            "run_dir"} <= summary.keys()
    assert summary["rounds"] == 2 and summary["clients"] == 3 and summary["status"] == "completed"
    assert summary["run_dir"] == str(run_dir)
    assert 0.0 <= summary["hr@10"] <= 1.0 and 0.0 <= summary["hr@10_full"] <= 1.0
    assert rounds_in(run_dir) == [1, 2]
    assert json.loads((run_dir / "config.json").read_text())["num-rounds"] == 2
    shape = ModelShape.from_config(config, 120)
    with np.load(run_dir / "model.npz") as model:
        assert [model[name].shape for name in model.files] == shared_shapes(shape)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["round-0001.npz", "round-0002.npz"]
    assert sorted(p.name for p in (run_dir / "stores").iterdir()) == ["store-0", "store-1", "store-2"]

    replies = [json.loads(p.read_text()) for p in spy_dir.iterdir()]
    evaluated_rounds = 1 if config.fold_evaluation else 2  # folded: only the last round is evaluated alone
    assert sorted((r["type"], r["partition"]) for r in replies) == sorted(
        [("train", store) for store in range(3) for _ in range(2)]
        + [("evaluate", store) for store in range(3) for _ in range(evaluated_rounds)])
    assert not any(r["error"] for r in replies)
    forbidden = {store: {tuple(s) for s in private_shapes(len(users_of_store(config, store)), shape)}
                 for store in range(number_of_stores(config))}
    assert forbidden == {0: {(10, 4), (10, 8)}, 1: {(10, 4), (10, 8)}, 2: {(10, 4), (10, 8)}}
    for reply in replies:
        assert not {tuple(a) for a in reply["arrays"]} & forbidden[reply["partition"]], reply
    # a train reply is one packed vector (shared/wire.py) with room for the shared parameters and nothing else
    packed = [(packed_length(shared_shapes(shape)),)]
    train_arrays = [r["arrays"] for r in replies if r["type"] == "train"]
    assert all([tuple(a) for a in arrays] == packed for arrays in train_arrays)
    assert all(r["arrays"] == [] for r in replies if r["type"] == "evaluate")

    resumed = simulate(config.replace(num_rounds=3))

    assert resumed["rounds"] == 3 and resumed["status"] == "completed"
    assert rounds_in(run_dir) == [1, 2, 3]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["round-0002.npz", "round-0003.npz"]
    store_ledger = json.loads((run_dir / "stores" / "store-0" / "ledger.json").read_text())
    assert store_ledger["entries"] == []  # privacy none: no DP round is ever recorded
