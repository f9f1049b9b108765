"""Specification of shared/ledger.py: ε of a store's (or the federation's) whole life, from its history."""

from __future__ import annotations

import itertools
import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from opacus.accountants import RDPAccountant

from shared.ledger import LedgerError, PrivacyLedger, merged_history, noise_for_target

DELTA = 1e-5
HISTORY = [(1, 1.1, 0.2, 1), (2, 1.1, 0.2, 1), (3, 0.9, 0.1, 5)]  # round, σ, q, steps


def ledger() -> PrivacyLedger:
    book = PrivacyLedger(delta=DELTA)
    for round_, sigma, q, steps in HISTORY:
        book.record(round_, sigma, q, steps)
    return book


def one_accountant_epsilon(history: list[tuple[int, float, float, int]]) -> float:
    accountant = RDPAccountant()
    for _, sigma, q, steps in history:
        for _ in range(steps):
            accountant.step(noise_multiplier=sigma, sample_rate=q)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(accountant.get_epsilon(delta=DELTA))


def test_epsilon_equals_one_accountant_fed_the_whole_history() -> None:
    assert ledger().epsilon() == pytest.approx(one_accountant_epsilon(HISTORY), rel=1e-12)


def test_epsilon_is_less_than_the_sum_of_per_round_epsilons() -> None:
    per_round = sum(one_accountant_epsilon([entry]) for entry in HISTORY)
    assert ledger().epsilon() < 0.8 * per_round  # composing per round would over-report by > 25 %


def test_epsilon_grows_with_every_recorded_round() -> None:
    book = PrivacyLedger(delta=DELTA)
    seen = [book.epsilon()]
    for round_, sigma, q, steps in HISTORY:
        book.record(round_, sigma, q, steps)
        seen.append(book.epsilon())
    assert seen[0] == 0.0
    assert all(later > earlier for earlier, later in itertools.pairwise(seen))


def test_rounds_with_equal_noise_and_rate_are_accounted_as_one_entry() -> None:
    book = ledger()
    book.record(4, 1.3, 0.3, 2)
    book.record(5, 0.9, 0.1, 2)
    assert merged_history(book.entries) == [(1.1, 0.2, 2), (0.9, 0.1, 7), (1.3, 0.3, 2)]


def test_projected_epsilon_is_the_next_round_and_records_nothing() -> None:
    book = ledger()
    before = book.epsilon()
    projected = book.projected_epsilon(1.1, 0.2, 1)
    assert projected == pytest.approx(one_accountant_epsilon([*HISTORY, (4, 1.1, 0.2, 1)]), rel=1e-12)
    assert projected > before
    assert book.rounds == [1, 2, 3] and book.epsilon() == before


def test_recording_the_same_round_twice_raises() -> None:
    book = ledger()
    with pytest.raises(LedgerError, match="round 3 is already in the ledger"):
        book.record(3, 1.0, 0.1, 1)
    assert book.rounds == [1, 2, 3]


def test_zero_noise_is_infinite_epsilon_and_zero_steps_cost_nothing() -> None:
    book = PrivacyLedger(delta=DELTA)
    book.record(1, 1.0, 0.2, 0)
    assert book.epsilon() == 0.0
    book.record(2, 0.0, 0.2, 1)
    assert book.epsilon() == float("inf")


def test_json_round_trip_keeps_the_epsilon(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    path.write_text(json.dumps(ledger().to_json()))
    loaded = PrivacyLedger.load(path)
    assert loaded.rounds == [1, 2, 3] and loaded.epsilon() == ledger().epsilon()


@pytest.mark.parametrize("contents", ["{not json", '{"delta": 1e-5}',
                                      '{"delta": 1e-5, "entries": [{"round": 1}]}'])
def test_an_unreadable_ledger_raises_instead_of_resetting_to_zero(tmp_path: Path, contents: str) -> None:
    path = tmp_path / "ledger.json"
    path.write_text(contents)
    with pytest.raises(LedgerError, match="ledger"):
        PrivacyLedger.load(path)


def test_a_missing_ledger_file_raises(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="refusing to start from zero"):
        PrivacyLedger.load(tmp_path / "ledger.json")


def test_noise_for_target_spends_at_most_the_target_and_nearly_all_of_it() -> None:
    sigma = noise_for_target(target_epsilon=2.0, delta=DELTA, sample_rate=0.2, steps=15)
    book = PrivacyLedger(delta=DELTA)
    for round_ in range(1, 16):
        book.record(round_, sigma, 0.2, 1)
    spent = book.epsilon()
    assert 2.0 - 0.05 <= spent <= 2.0


@pytest.fixture
def fresh_rdp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty on-disk RDP cache under a private data dir, and an empty per-process cache."""
    from shared import ledger as ledger_module
    from shared.datasets import DATA_DIR_ENV

    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    ledger_module._rdp_per_step.cache_clear()
    yield tmp_path
    ledger_module._rdp_per_step.cache_clear()


def test_rdp_curves_are_kept_on_disk_for_the_next_process(
        fresh_rdp_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shared import ledger as ledger_module

    expected = one_accountant_epsilon(HISTORY)
    assert ledger().epsilon() == pytest.approx(expected, rel=1e-12)
    assert len(list(fresh_rdp_cache.rglob("*.npz"))) == 2  # one curve per (σ, q) of the history
    ledger_module._rdp_per_step.cache_clear()  # a new process (a forked task) starts with an empty cache

    def not_again(**_: object) -> None:
        raise AssertionError("the curve was computed again instead of read from disk")

    monkeypatch.setattr(ledger_module.rdp_analysis, "compute_rdp", not_again)
    assert ledger().epsilon() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("damage", ["truncated", "other curve"])
def test_a_damaged_or_foreign_cached_curve_is_recomputed_never_used(fresh_rdp_cache: Path,
                                                                     damage: str) -> None:
    from shared import ledger as ledger_module

    expected = one_accountant_epsilon(HISTORY)
    ledger().epsilon()
    files = sorted(fresh_rdp_cache.rglob("*.npz"))
    if damage == "truncated":
        for path in files:
            path.write_bytes(path.read_bytes()[:40])
    else:  # each file holds the other (σ, q)'s curve, as a file renamed by hand would
        contents = [path.read_bytes() for path in files]
        for path, content in zip(files, reversed(contents), strict=True):
            path.write_bytes(content)
    ledger_module._rdp_per_step.cache_clear()
    assert ledger().epsilon() == pytest.approx(expected, rel=1e-12)
