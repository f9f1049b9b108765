"""Specification of server/strategy.py's round semantics, driven directly (no Flower runtime): the update it
applies, and that a failed or missing round stops the run loudly instead of carrying an unchanged model."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.common import Code, EvaluateRes, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

from server.optimizer import ServerOptimizer
from server.run_record import RunRecord
from server.strategy import FedRecStrategy, RoundFailed
from shared.config import RunConfig
from shared.wire import WireFormatError, pack, unpack

START = [np.zeros((2, 2), dtype=np.float64), np.ones(3, dtype=np.float64)]
SHAPES = [(2, 2), (3,)]
POPULATION = 30


def strategy(config: RunConfig, run_dir: Path, num_stores: int = 3) -> FedRecStrategy:
    record = RunRecord.open(run_dir, config, ["a", "b"])
    optimizer = ServerOptimizer.from_config(config)
    return FedRecStrategy(config, record, [a.copy() for a in START], optimizer, num_stores, POPULATION)


def fit_result(update: list[np.ndarray], weight: int, loss: float = 0.5,
               store: int = 0) -> tuple[Any, FitRes]:
    return None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(pack(update)), weight,
                        {"loss": loss, "store": store})


def received(parameters: Any) -> list[np.ndarray]:
    """The global parameters as a store unpacks them."""
    return unpack(parameters_to_ndarrays(parameters), SHAPES)


def eval_result(**metrics: float) -> tuple[Any, EvaluateRes]:
    return None, EvaluateRes(Status(Code.OK, ""), 0.0, int(metrics.get("test/users", 0)), dict(metrics))


def update(value: float) -> list[np.ndarray]:
    return [np.full((2, 2), value), np.full(3, value)]


def test_round_applies_the_example_weighted_mean_update(make_config: Callable[..., RunConfig],
                                                        tmp_path: Path) -> None:
    fed = strategy(make_config(), tmp_path)
    parameters, metrics = fed.aggregate_fit(1, [fit_result(update(1.0), 1, loss=0.5),
                                                fit_result(update(5.0), 3, loss=0.7)], [])
    assert parameters is not None
    new = received(parameters)
    np.testing.assert_allclose(new[0], np.full((2, 2), 4.0))     # 0 + (1·1 + 5·3) / 4
    np.testing.assert_allclose(new[1], np.full(3, 5.0))          # 1 + 4
    assert metrics == {"loss": pytest.approx(0.6)}
    assert fed.aggregated == {1}


def test_the_aggregate_does_not_depend_on_the_order_replies_arrive_in(make_config: Callable[..., RunConfig],
                                                                       tmp_path: Path) -> None:
    """Float addition is not associative: 1e16 + 1 - 1e16 is 0 or 1 by order. Replies are summed in store
    order, so a seeded run ends with the same model whichever store answered first."""
    replies = [fit_result(update(value), 1, store=store) for store, value in enumerate([1e16, 1.0, -1e16])]
    models = []
    for order in ([0, 1, 2], [2, 0, 1], [1, 2, 0]):
        fed = strategy(make_config(), tmp_path / "-".join(map(str, order)))
        parameters, _ = fed.aggregate_fit(1, [replies[i] for i in order], [])
        models.append(received(parameters))
    assert np.mean(np.array([1e16, -1e16, 1.0])) != np.mean(np.array([1e16, 1.0, -1e16]))  # order matters
    for model in models[1:]:
        for got, first in zip(model, models[0], strict=True):
            np.testing.assert_array_equal(got, first)


def test_user_level_update_is_the_sum_over_q_times_population(make_config: Callable[..., RunConfig],
                                                              tmp_path: Path) -> None:
    config = make_config(privacy="user", secagg=True, secagg_num_shares=3, secagg_reconstruction_threshold=2,
                         noise_share_stores=2, sigma_from_target=False, noise_multiplier=1.0,
                         user_sample_rate=0.2)
    fed = strategy(config, tmp_path)
    parameters, _ = fed.aggregate_fit(1, [fit_result(update(3.0), 1), fit_result(update(3.0), 1)], [])
    assert parameters is not None
    np.testing.assert_allclose(received(parameters)[0], np.full((2, 2), 1.0))  # 6 / (0.2 · 30)
    assert fed.record.federation_ledger.rounds == [1]


def test_with_only_the_item_bias_learned_every_other_parameter_stays_exactly_as_published(
        make_config: Callable[..., RunConfig], tmp_path: Path) -> None:
    """SecAgg+'s dequantization may leave float dust where stores sent exact zeros; the server drops it."""
    config = make_config(privacy="user", item_tower="text", federated_parameters="item-bias",
                         sigma_from_target=False, noise_multiplier=1.0, user_sample_rate=0.2)
    record = RunRecord.open(tmp_path, config, ["mlp_item_proj.weight", "item_bias.weight"])
    fed = FedRecStrategy(config, record, [a.copy() for a in START], ServerOptimizer.from_config(config), 3,
                         POPULATION)
    dust = [np.full((2, 2), 1e-13), np.full(3, 3.0)]
    parameters, _ = fed.aggregate_fit(1, [fit_result(dust, 1, store=0), fit_result(dust, 1, store=1)], [])
    new = received(parameters)
    np.testing.assert_array_equal(new[0], START[0])                 # not learned: exactly as published
    np.testing.assert_allclose(new[1], START[1] + 6.0 / (0.2 * POPULATION))  # learned: the DP-FedAvg step


def test_failed_store_fails_the_round_and_leaves_the_model(make_config: Callable[..., RunConfig],
                                                           tmp_path: Path) -> None:
    fed = strategy(make_config(accept_failures=False), tmp_path)
    with pytest.raises(RoundFailed, match=r"round 1: 1 store\(s\) failed \(disk full\).*NOT updated"):
        fed.aggregate_fit(1, [fit_result(update(1.0), 1)], [OSError("disk full")])
    assert all(np.array_equal(a, b) for a, b in zip(fed.shared, START, strict=True))
    history = json.loads((tmp_path / "metrics.json").read_text())
    assert history == [{"round": 1, "failures": 1, "reasons": "disk full"}]


def test_accepted_failures_aggregate_the_stores_that_succeeded(make_config: Callable[..., RunConfig],
                                                               tmp_path: Path) -> None:
    fed = strategy(make_config(accept_failures=True), tmp_path)
    parameters, _ = fed.aggregate_fit(1, [fit_result(update(2.0), 1)], [OSError("disk full")])
    assert parameters is not None
    np.testing.assert_allclose(received(parameters)[0], np.full((2, 2), 2.0))


def test_round_without_any_result_fails_even_when_failures_are_accepted(
        make_config: Callable[..., RunConfig], tmp_path: Path) -> None:
    fed = strategy(make_config(accept_failures=True), tmp_path)
    with pytest.raises(RoundFailed, match="round 1"):
        fed.aggregate_fit(1, [], [OSError("disk full")])
    with pytest.raises(RoundFailed, match="no store returned an update"):
        fed.aggregate_fit(1, [], [])


def test_user_level_round_with_fewer_stores_than_noise_shares_fails(make_config: Callable[..., RunConfig],
                                                                    tmp_path: Path) -> None:
    config = make_config(privacy="user", secagg=True, secagg_num_shares=4, secagg_reconstruction_threshold=3,
                         noise_share_stores=3, sigma_from_target=False, noise_multiplier=1.0)
    fed = strategy(config, tmp_path)
    with pytest.raises(RoundFailed, match="only 2 stores contributed, fewer than noise-share-stores=3"):
        fed.aggregate_fit(1, [fit_result(update(1.0), 1), fit_result(update(1.0), 1)], [])
    assert fed.record.federation_ledger.rounds == []


def test_round_that_was_never_aggregated_fails_at_evaluate(make_config: Callable[..., RunConfig],
                                                           tmp_path: Path) -> None:
    fed = strategy(make_config(), tmp_path)
    with pytest.raises(RoundFailed, match="round 1: no aggregate was produced"):
        fed.evaluate(1, ndarrays_to_parameters(pack(START)))
    assert not (tmp_path / "checkpoints").exists()


def test_aggregated_round_is_checkpointed_at_evaluate(make_config: Callable[..., RunConfig],
                                                      tmp_path: Path) -> None:
    fed = strategy(make_config(), tmp_path)
    assert fed.evaluate(0, ndarrays_to_parameters(pack(START))) is None  # round 0: nothing to do
    fed.aggregate_fit(1, [fit_result(update(1.0), 1)], [])
    fed.evaluate(1, ndarrays_to_parameters(pack(fed.shared)))
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["round-0001.npz"]


def test_budget_exhaustion_stops_before_the_round(make_config: Callable[..., RunConfig],
                                                  tmp_path: Path) -> None:
    config = make_config(privacy="user", sigma_from_target=False, noise_multiplier=1.0, target_epsilon=0.01)
    fed = strategy(config, tmp_path)
    assert fed.configure_fit(1, ndarrays_to_parameters(pack(START)), None) == []  # type: ignore[arg-type]
    assert fed.budget_stop is not None and "target-epsilon 0.01" in fed.budget_stop
    assert fed.evaluate(1, ndarrays_to_parameters(pack(START))) is None  # a budget stop is not a failure


def test_federated_metrics_are_user_weighted(make_config: Callable[..., RunConfig], tmp_path: Path) -> None:
    fed = strategy(make_config(), tmp_path)
    fed.aggregate_fit(1, [fit_result(update(1.0), 1)], [])
    _, metrics = fed.aggregate_evaluate(1, [eval_result(**{"test/users": 10.0, "test/hr@10": 5.0}),
                                            eval_result(**{"test/users": 30.0, "test/hr@10": 3.0})], [])
    assert metrics["test/users"] == 40.0 and metrics["test/hr@10"] == pytest.approx(0.2)  # (5 + 3) / 40
    assert json.loads((tmp_path / "metrics.json").read_text())[-1]["test/hr@10"] == pytest.approx(0.2)


def test_failed_evaluation_fails_the_round(make_config: Callable[..., RunConfig], tmp_path: Path) -> None:
    fed = strategy(make_config(accept_failures=False), tmp_path)
    with pytest.raises(RoundFailed, match="evaluation failed at 1 store"):
        fed.aggregate_evaluate(1, [eval_result(**{"test/users": 1.0})], [RuntimeError("oom")])


def test_parameters_travel_as_one_packed_vector(make_config: Callable[..., RunConfig],
                                                tmp_path: Path) -> None:
    fed = strategy(make_config(), tmp_path)
    initial = fed.initial_parameters
    assert initial is not None
    assert [a.shape for a in parameters_to_ndarrays(initial)] == [(7,)]  # 2·2 + 3 values, one array
    np.testing.assert_array_equal(received(initial)[1], START[1])


def test_a_reply_of_the_wrong_size_fails_the_round_naming_both_sizes(make_config: Callable[..., RunConfig],
                                                                     tmp_path: Path) -> None:
    fed = strategy(make_config(), tmp_path)
    with pytest.raises(WireFormatError, match=r"6 values.*need 7"):
        fed.aggregate_fit(1, [fit_result([np.zeros(6)], 1)], [])
    assert all(np.array_equal(a, b) for a, b in zip(fed.shared, START, strict=True))
