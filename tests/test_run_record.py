"""Specification of server/run_record.py: what a run leaves in its directory, and how a restart resumes it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from server.checkpoint import checkpoint_dir
from server.optimizer import ServerOptimizer
from server.run_record import RunRecord
from shared.config import RunConfig

NAMES = ["w", "b"]


def shared(value: float) -> list[np.ndarray]:
    return [np.full((2, 2), value), np.full(3, value)]


def run_round(record: RunRecord, round_: int, optimizer: ServerOptimizer) -> None:
    """What the strategy does each round: fit noted, checkpoint, then the federated evaluation."""
    record.note_fit(round_, [{"store": 0, "loss": 0.5}], n_stores=1)
    record.checkpoint(round_, shared(float(round_)), optimizer)
    record.note_evaluation(round_, {"test/hr@10": round_ / 10, "test/users": 30.0}, loss=0.5, seconds=1.0)


def test_resume_continues_after_the_last_checkpoint_with_the_full_history(
        make_config: Callable[..., RunConfig], tmp_path: Path) -> None:
    optimizer = ServerOptimizer("sgd", 1.0, 0.9)
    first = RunRecord.open(tmp_path, make_config(num_rounds=2), NAMES)
    for round_ in (1, 2):
        run_round(first, round_, optimizer)

    resumed = RunRecord.open(tmp_path, make_config(num_rounds=5), NAMES)

    assert resumed.resumed_from is not None and resumed.completed_round == 2 and resumed.planned_rounds == 3
    np.testing.assert_array_equal(resumed.resumed_from.shared[0], np.full((2, 2), 2.0))
    # round 2's evaluation came after round 2's checkpoint and must not be lost
    assert [entry["round"] for entry in resumed.history] == [1, 2]
    assert resumed.history[-1]["test/hr@10"] == 0.2


def test_resume_from_an_older_checkpoint_drops_the_rounds_after_it(
        make_config: Callable[..., RunConfig], tmp_path: Path) -> None:
    optimizer = ServerOptimizer("sgd", 1.0, 0.9)
    first = RunRecord.open(tmp_path, make_config(num_rounds=3), NAMES)
    for round_ in (1, 2, 3):
        run_round(first, round_, optimizer)
    (checkpoint_dir(tmp_path) / "round-0003.npz").rename(tmp_path / "round-0003.npz.corrupt")  # moved aside

    resumed = RunRecord.open(tmp_path, make_config(num_rounds=3), NAMES)

    assert resumed.completed_round == 2 and resumed.planned_rounds == 1
    assert [entry["round"] for entry in resumed.history] == [1, 2]


def test_a_run_that_reached_num_rounds_plans_nothing(make_config: Callable[..., RunConfig],
                                                      tmp_path: Path) -> None:
    record = RunRecord.open(tmp_path, make_config(num_rounds=1), NAMES)
    run_round(record, 1, ServerOptimizer("sgd", 1.0, 0.9))
    assert RunRecord.open(tmp_path, make_config(num_rounds=1), NAMES).planned_rounds == 0


def test_finish_writes_model_summary_and_ledger(make_config: Callable[..., RunConfig],
                                                 tmp_path: Path) -> None:
    record = RunRecord.open(tmp_path, make_config(num_rounds=1), NAMES)
    run_round(record, 1, ServerOptimizer("sgd", 1.0, 0.9))
    summary = record.finish(shared(1.0), "completed")
    assert summary["rounds"] == 1 and summary["clients"] == 1 and summary["hr@10"] == 0.1
    assert summary["users"] == 30.0 and summary["status"] == "completed"
    assert summary["run_dir"] == str(tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    with np.load(tmp_path / "model.npz") as model:
        assert model.files == NAMES
    assert json.loads((tmp_path / "ledger.json").read_text())["privacy_unit"] == "none"
    assert json.loads((tmp_path / "config.json").read_text())["num-rounds"] == 1


def test_prv_epsilon_is_reported_beside_rdp_and_is_tighter(tmp_path: Path) -> None:
    from server.run_record import RunRecord
    from shared.config import from_mapping

    config = from_mapping({"privacy": "user", "sigma-from-target": False, "noise-multiplier": 1.0,
                           "user-sample-rate": 0.2})
    record = RunRecord(tmp_path, config, [])
    for round_ in (1, 2, 3):
        record.federation_ledger.record(round_, 1.0, 0.2, 1)
    rdp, prv = record.epsilon(), record.epsilon_prv()
    assert prv is not None and 0 < prv < rdp


def test_a_prv_epsilon_that_cannot_be_computed_is_null_and_the_rdp_one_stands(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """σ → 0 makes Opacus' PRV grid ask for tens of GiB; the run's summary must still be written."""
    from server.run_record import RunRecord
    from shared.config import from_mapping
    from shared.ledger import PrivacyLedger

    config = from_mapping({"privacy": "user", "sigma-from-target": False, "noise-multiplier": 1.0})
    record = RunRecord(tmp_path, config, [])
    record.federation_ledger.record(1, 1.0, 0.2, 1)
    real = PrivacyLedger.epsilon

    def prv_out_of_memory(self: PrivacyLedger, accountant: str = "rdp") -> float:
        if accountant == "prv":
            raise MemoryError("Unable to allocate 83.8 GiB")
        return real(self, accountant)

    monkeypatch.setattr(PrivacyLedger, "epsilon", prv_out_of_memory)
    assert record.epsilon_prv() is None
    assert 0 < record.epsilon() < float("inf")


def test_a_user_level_round_records_how_many_shoppers_local_runs_diverged(
        make_config: Callable[..., RunConfig], tmp_path: Path) -> None:
    record = RunRecord.open(tmp_path, make_config(privacy="user", num_rounds=1), NAMES)
    record.note_fit(1, [{"store": 0, "loss": 0.4, "diverged_users": 2},
                        {"store": 1, "loss": 0.5, "diverged_users": 1}], n_stores=2)
    record.note_evaluation(1, {"test/hr@10": 0.1}, loss=0.45, seconds=1.0)
    assert record.history[-1]["diverged_users"] == 3
