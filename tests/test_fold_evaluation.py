"""fold-evaluation: round r's federated evaluation rides in round r+1's training message, same numbers.

Whole runs of the real ServerApp workflow against the real ClientApp in this process (tests/inprocess.py),
with user-level DP and SecAgg+ as the main job runs them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared.config import RunConfig
from shared.messages import EVALUATE_ROUND_KEY, EVALUATED_PREFIX
from tests.conftest import TINY_STORES, tiny_config, write_tiny_dataset
from tests.inprocess import InProcessGrid, run_in_process
from tests.test_privacy_e2e import SECAGG, USER_DP, client_app, rdp_epsilon

STORES = len(TINY_STORES)
ROUNDS = 3


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("fold") / "data")


def run(data: Path, run_dir: Path, fold: bool, **overrides: Any) -> tuple[dict[str, Any], InProcessGrid,
                                                                          list[dict[str, Any]]]:
    config = tiny_config(data, **{"num_rounds": ROUNDS, **USER_DP, **SECAGG, **overrides,
                                  "fold_evaluation": fold, "run_dir": str(run_dir)})
    summary, grid = run_in_process(config, client_app(config), STORES)
    return summary, grid, json.loads((run_dir / "metrics.json").read_text())


def without_time(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in entry.items() if k != "seconds"} for entry in history]


def kinds_per_round(grid: InProcessGrid) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for reply in grid.replies:
        found.setdefault(reply.metadata.group_id, []).append(reply.metadata.message_type)
    return found


def test_folded_evaluation_gives_the_same_history_and_result_with_one_exchange_fewer(
        data: Path, tmp_path: Path) -> None:
    own_summary, own_grid, own_history = run(data, tmp_path / "own", fold=False)
    summary, grid, history = run(data, tmp_path / "folded", fold=True)

    assert without_time(history) == without_time(own_history)
    assert [h["round"] for h in history] == list(range(1, ROUNDS + 1))
    assert all("seconds" in h for h in history)
    same = ("hr@10", "ndcg@10", "hr@10_full", "ndcg@10_full", "auc", "users", "rounds", "clients", "epsilon")
    assert {k: summary[k] for k in same} == {k: own_summary[k] for k in same}
    assert summary["status"] == own_summary["status"] == "completed"
    # Rounds 1 and 2 are evaluated inside the next round's training; only the last one on its own.
    assert {r: sorted(set(k)) for r, k in kinds_per_round(grid).items()} == {
        "1": ["train"], "2": ["train"], "3": ["evaluate", "train"]}
    assert all(sorted(set(k)) == ["evaluate", "train"] for k in kinds_per_round(own_grid).values())
    assert len(grid.replies) == len(own_grid.replies) - STORES * (ROUNDS - 1)


def test_training_messages_name_the_round_to_evaluate(data: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[int, int | None]] = []
    original = InProcessGrid.send_and_receive

    def spy(self: InProcessGrid, messages: Any, *, timeout: float | None = None) -> Any:
        messages = list(messages)
        for message in messages:
            for record in message.content.config_records.values():
                if "round" in record and message.metadata.message_type == "train":
                    asked.append((int(record["round"]), record.get(EVALUATE_ROUND_KEY)))  # type: ignore[arg-type]
        return original(self, messages, timeout=timeout)

    monkeypatch.setattr(InProcessGrid, "send_and_receive", spy)
    run(data, tmp_path / "run", fold=True)
    assert sorted(set(asked)) == [(1, None), (2, 1), (3, 2)]


def test_the_round_before_a_budget_stop_is_evaluated_on_its_own(data: Path, tmp_path: Path) -> None:
    after_two, after_three = rdp_epsilon([(3.0, 1.0, 2)], 1e-5), rdp_epsilon([(3.0, 1.0, 3)], 1e-5)
    budget = {"num_rounds": 4, "target_epsilon": round((after_two + after_three) / 2, 3)}  # 2 rounds fit
    own_summary, _, own_history = run(data, tmp_path / "own", fold=False, **budget)
    summary, grid, history = run(data, tmp_path / "folded", fold=True, **budget)

    assert summary["status"] == own_summary["status"] == "stopped-by-budget" and summary["rounds"] == 2
    assert without_time(history) == without_time(own_history)
    assert [h["round"] for h in history] == [1, 2] and summary["hr@10"] == own_summary["hr@10"]
    assert {r: sorted(set(k)) for r, k in kinds_per_round(grid).items()} == {
        "1": ["train"], "2": ["evaluate", "train"]}


def test_a_resumed_run_evaluates_the_round_it_restarts_from_when_that_evaluation_was_lost(
        data: Path, tmp_path: Path) -> None:
    """The ServerApp side died after round 2's checkpoint, before round 3's training brought back round 2's
    evaluation: the resumed run asks for it with its first training messages."""
    _, _, uninterrupted = run(data, tmp_path / "uninterrupted", fold=True)
    run_dir = tmp_path / "interrupted"
    run(data, run_dir, fold=True, num_rounds=2)
    metrics = run_dir / "metrics.json"
    metrics.write_text(json.dumps([h for h in json.loads(metrics.read_text()) if h["round"] != 2]))

    summary, grid, history = run(data, run_dir, fold=True)

    assert summary["status"] == "completed" and summary["rounds"] == ROUNDS
    assert [h["round"] for h in history] == [1, 2, 3]
    resumed_round_two = {k: v for k, v in history[1].items() if k not in ("seconds", "loss", "stores",
                                                                           "diverged_users")}
    expected = {k: v for k, v in uninterrupted[1].items() if k in resumed_round_two}
    assert resumed_round_two == expected and "seconds" not in history[1]  # no time made up for it
    assert without_time(history[2:]) == without_time(uninterrupted[2:])
    # Flower's group ids count the resumed workflow's own rounds: its only round is global round 3.
    assert {r: sorted(set(k)) for r, k in kinds_per_round(grid).items()} == {"1": ["evaluate", "train"]}


def test_a_store_evaluates_the_incoming_model_before_it_trains_and_trains_as_before(
        make_config: Callable[..., RunConfig], tmp_path: Path) -> None:
    from client.store import StoreClient, store_data
    from tests.test_store_client import STORE, global_parameters

    config = make_config()
    for name in ("alone", "folded"):
        client = StoreClient(config, STORE, store_data(config, STORE), tmp_path / name)
        client.fit(global_parameters(config), {"round": 1})  # round 1 leaves private state behind
    alone = StoreClient(config, STORE, store_data(config, STORE), tmp_path / "alone")
    folded = StoreClient(config, STORE, store_data(config, STORE), tmp_path / "folded")
    incoming = global_parameters(config)

    _, _, evaluation = alone.evaluate(incoming, {"round": 1})
    sent_alone, weight_alone, trained_alone = alone.fit(incoming, {"round": 2})
    sent, weight, trained = folded.fit(incoming, {"round": 2, EVALUATE_ROUND_KEY: 1})

    assert {k[len(EVALUATED_PREFIX):]: v for k, v in trained.items() if k.startswith(EVALUATED_PREFIX)} \
        == evaluation
    assert all(np.array_equal(a, b) for a, b in zip(sent, sent_alone, strict=True)) and weight == weight_alone
    same = {k for k in trained_alone if k != "seconds"}
    assert {k: trained[k] for k in same} == {k: trained_alone[k] for k in same}
