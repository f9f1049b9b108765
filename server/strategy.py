"""The aggregation strategy: FedAvg on the shared parameters' updates, a server optimizer, loud failures.

Flower's legacy ``FedAvg`` (which SecAgg+'s workflow drives in flwr 1.41) averages what stores send; fedrec's
stores send *updates*, so this strategy keeps the global shared parameters itself and applies the aggregate
through ``ServerOptimizer``; both travel packed into one vector (shared/wire.py). It also refuses the silent
outcomes Flower allows: a round with failed stores (unless ``accept-failures``), a user-level DP round with
fewer than K stores (the sum would carry less noise than promised), and a round whose aggregation never ran
(SecAgg+ "halted" still lets the workflow "finish").
"""

from __future__ import annotations

import logging
import time
from typing import Any, TypeVar

import numpy as np
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg

from server.optimizer import ServerOptimizer
from server.run_record import RunRecord
from shared.config import RunConfig
from shared.messages import EVALUATE_ROUND_KEY, EVALUATED_PREFIX, NOISE_KEY, ROUND_KEY, RUN_DIR_KEY
from shared.metrics import mean_metrics
from shared.model import federated_names
from shared.privacy import federation_noise_multiplier, noise_shares, user_level_estimate
from shared.wire import pack, unpack

log = logging.getLogger("fedrec.server")



class RoundFailed(RuntimeError):
    """A round without a valid aggregate; the run stops instead of carrying an unchanged model."""


def minimum_stores(config: RunConfig, num_stores: int) -> int:
    """Stores that must be online before a round starts (every round samples all that are online).

    All of them by default. With ``accept-failures`` a deployment must carry on when a partner is down (or
    refused to start, e.g. a bad data mount), so a round starts once the fewest stores that keep it valid are
    there: K noise-share stores (user-level DP) and SecAgg+'s reconstruction threshold.
    """
    if not config.accept_failures:
        return num_stores
    floor = 1
    if config.privacy == "user":
        floor = max(floor, noise_shares(config))
    if config.secagg:
        floor = max(floor, config.secagg_reconstruction_threshold)
    return min(num_stores, floor)


class FedRecStrategy(FedAvg):
    def __init__(
        self,
        config: RunConfig,
        record: RunRecord,
        shared: list[np.ndarray],
        optimizer: ServerOptimizer,
        num_stores: int,
        population: int,
    ) -> None:
        needed = minimum_stores(config, num_stores)
        super().__init__(
            fraction_fit=1.0,
            fraction_evaluate=1.0,
            min_fit_clients=needed,
            min_evaluate_clients=needed,
            min_available_clients=needed,
            initial_parameters=ndarrays_to_parameters(pack(shared)),
            accept_failures=True,
            fit_metrics_aggregation_fn=_no_metrics,  # the stores' metrics are recorded per store in RunRecord
        )
        self.config = config
        self.record = record
        self.shared = shared
        self.optimizer = optimizer
        self.population = population
        self.start_round = record.completed_round
        self.aggregated: set[int] = set()
        self.budget_stop: str | None = None
        self._round_started: dict[int, float] = {}  # global round -> when its configure_fit ran
        self._fit_loss = float("nan")
        self._diverged = 0  # shoppers whose local run diverged this round (user-level DP; counted zero)
        # fold-evaluation: the global round whose evaluation rides in the next training message. A resumed run
        # evaluates the round it restarts from there when the record has no evaluation of it yet.
        self._folded: int | None = None
        if config.fold_evaluation and self.start_round > 0 and not record.has_evaluation(self.start_round):
            self._folded = self.start_round

    def global_round(self, workflow_round: int) -> int:
        return self.start_round + workflow_round

    # -- fit --------------------------------------------------------------------------------------------
    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        round_ = self.global_round(server_round)
        self._round_started[round_] = time.perf_counter()
        if self.budget_stop:  # the workflow still calls every planned round; the first refusal stands
            return []
        projected = self._projected_epsilon()
        if projected > self.config.target_epsilon:
            self.budget_stop = (
                f"round {round_} would reach ε={projected:.3f} > target-epsilon "
                f"{self.config.target_epsilon}; the run stops here"
            )
            log.warning(self.budget_stop)
            return []
        instructions = super().configure_fit(server_round, parameters, client_manager)
        extra = self._round_config(server_round)
        if self.config.privacy == "user":
            extra[NOISE_KEY] = federation_noise_multiplier(self.config)
        if self._folded is not None:
            extra[EVALUATE_ROUND_KEY] = self._folded
        return [(proxy, FitIns(ins.parameters, {**ins.config, **extra})) for proxy, ins in instructions]

    def _projected_epsilon(self) -> float:
        """The federation's ε after one more round (user-level DP; 0 otherwise: no federation ledger)."""
        if self.config.privacy != "user":
            return 0.0
        return self.record.federation_ledger.projected_epsilon(
            federation_noise_multiplier(self.config), self.config.user_sample_rate, 1)

    def _next_round_trains(self, server_round: int) -> bool:
        """Whether the workflow round after ``server_round`` will send training messages (it is planned and
        the privacy budget allows it: the same test ``configure_fit`` makes, on the same ledger)."""
        return (server_round < self.record.planned_rounds and not self.budget_stop
                and self._projected_epsilon() <= self.config.target_epsilon)

    def _round_config(self, server_round: int) -> dict[str, Scalar]:
        """What every store needs with each instruction: the global round and where simulated state lives."""
        return {ROUND_KEY: self.global_round(server_round), RUN_DIR_KEY: str(self.record.run_dir)}

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        round_ = self.global_round(server_round)
        if failures:
            reasons = "; ".join(_failure_reason(f) for f in failures[:5])
            message = f"round {round_}: {len(failures)} store(s) failed ({reasons})"
            self.record.note_failures(round_, len(failures), reasons)
            if not self.config.accept_failures or not results:
                raise RoundFailed(message + "; the global model was NOT updated")
            log.error("%s; aggregating the %d that succeeded", message, len(results))
        if not results:
            raise RoundFailed(f"round {round_}: no store returned an update")
        if self.config.privacy == "user" and len(results) < noise_shares(self.config):
            raise RoundFailed(
                f"round {round_}: only {len(results)} stores contributed, fewer than "
                f"noise-share-stores={noise_shares(self.config)}; the sum would be under-noised"
            )
        results = in_store_order(results)
        if self._folded is not None:  # the previous round's evaluation, done before this round's training
            evaluated = self._folded
            self._folded = None
            self._record_evaluation(evaluated, [_evaluated_metrics(res.metrics) for _, res in results],
                                    seconds=self._round_started[round_] - self._round_started[evaluated]
                                    if evaluated in self._round_started else None)
        mean_params, _ = super().aggregate_fit(server_round, results, [])
        if mean_params is None:
            raise RoundFailed(f"round {round_}: aggregation produced no parameters")
        mean = unpack(parameters_to_ndarrays(mean_params), [a.shape for a in self.shared])
        update = self._update_from_mean(mean, len(results))
        self.shared = self.optimizer.step(self.shared, update)
        metrics = [_without_evaluated(res.metrics) for _, res in results]
        self._fit_loss = float(np.nanmean([float(m.get("loss", np.nan)) for m in metrics]))
        self._diverged = sum(int(m.get("diverged_users", 0)) for m in metrics)
        self.record.note_fit(round_, metrics, len(results))
        self.aggregated.add(server_round)
        return ndarrays_to_parameters(pack(self.shared)), {"loss": self._fit_loss}

    def _update_from_mean(self, mean: list[np.ndarray], n_results: int) -> list[np.ndarray]:
        """The step direction. User-level DP: stores sent noised sums (weight 1 each), so the mean times the
        number of stores is the sum the DP-FedAvg estimate divides."""
        if self.config.privacy != "user":
            return mean
        step = user_level_estimate([m * n_results for m in mean], self.config, self.population)
        learned = set(federated_names(self.record.names, self.config.learned_shared))
        # Stores send exact zeros for the parameters the federation does not learn; SecAgg+'s dequantization
        # could still leave float dust there, and those parameters must stay exactly as published.
        return [part if name in learned else np.zeros_like(part)
                for name, part in zip(self.record.names, step, strict=True)]

    # -- after fit: the round's checkpoint --------------------------------------------------------------
    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        if server_round == 0:
            return None
        round_ = self.global_round(server_round)
        if server_round not in self.aggregated:
            if self.budget_stop:
                return None
            raise RoundFailed(
                f"round {round_}: no aggregate was produced (secure aggregation halted or every "
                "store failed); the global model was NOT updated"
            )
        self.record.checkpoint(round_, self.shared, self.optimizer)
        return None

    # -- federated evaluation ---------------------------------------------------------------------------
    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        if server_round not in self.aggregated:
            return []
        if self.config.fold_evaluation and self._next_round_trains(server_round):
            self._folded = self.global_round(server_round)  # evaluated by the stores with the next training
            return []
        instructions = super().configure_evaluate(server_round, parameters, client_manager)
        extra = self._round_config(server_round)
        return [(proxy, EvaluateIns(ins.parameters, {**ins.config, **extra})) for proxy, ins in instructions]

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        round_ = self.global_round(server_round)
        if failures:
            reasons = "; ".join(_failure_reason(f) for f in failures[:5])
            log.error("round %d: %d store(s) failed to evaluate (%s)", round_, len(failures), reasons)
            self.record.note_failures(round_, len(failures), reasons)
            if not self.config.accept_failures:
                raise RoundFailed(f"round {round_}: evaluation failed at {len(failures)} store(s): {reasons}")
        started = self._round_started.get(round_)
        metrics = self._record_evaluation(round_, [res.metrics for _, res in in_store_order(results)],
                                          seconds=None if started is None else time.perf_counter() - started)
        return 0.0, dict(metrics)

    def _record_evaluation(self, round_: int, store_metrics: list[dict[str, Any]],
                           seconds: float | None) -> dict[str, float]:
        """Round ``round_``'s federated evaluation into the run record, and its progress line. ``seconds`` is
        the round's wall time: to its evaluation's end, or (folded) to the next round's start."""
        metrics = aggregate_store_metrics(store_metrics)
        self.record.note_evaluation(round_, metrics, self._fit_loss, seconds)
        k = self.config.top_k
        diverged = f" ({self._diverged} shoppers' local runs diverged)" if self._diverged else ""
        took = "" if seconds is None else f" {seconds:.1f}s"
        print(
            f"round {round_}/{self.start_round + self.record.planned_rounds} loss {self._fit_loss:.4f} "
            f"hr@{k} {metrics.get(f'valid/hr@{k}', float('nan')):.4f} (valid){took}{diverged}",
            flush=True,
        )
        return metrics


Result = TypeVar("Result", FitRes, EvaluateRes)


def in_store_order(results: list[tuple[ClientProxy, Result]]) -> list[tuple[ClientProxy, Result]]:
    """The replies sorted by store, not by arrival: float sums then round the same way in every run, so a
    seeded run reproduces exactly (the arrival order changes from run to run)."""
    return sorted(results, key=lambda result: int(result[1].metrics.get("store", -1)))


def aggregate_store_metrics(store_metrics: list[dict[str, Any]]) -> dict[str, float]:
    """User-weighted means of the stores' summed metrics (PROTOCOL.md, federated evaluation)."""
    out: dict[str, float] = {}
    for prefix in ("valid/", "test/"):
        sums: dict[str, float] = {}
        for metrics in store_metrics:
            for key, value in metrics.items():
                if key.startswith(prefix):
                    sums[key[len(prefix) :]] = sums.get(key[len(prefix) :], 0.0) + float(value)
        out.update({prefix + key: value for key, value in mean_metrics(sums).items()})
    return out


def _evaluated_metrics(metrics: dict[str, Scalar]) -> dict[str, Scalar]:
    """A store's folded evaluation (its own store number included) from its fit metrics (fold-evaluation)."""
    return {key[len(EVALUATED_PREFIX):]: value for key, value in metrics.items()
            if key.startswith(EVALUATED_PREFIX)}


def _without_evaluated(metrics: dict[str, Scalar]) -> dict[str, Scalar]:
    return {key: value for key, value in metrics.items() if not key.startswith(EVALUATED_PREFIX)}


def _no_metrics(_: list[tuple[int, dict[str, Scalar]]]) -> dict[str, Scalar]:
    return {}


def _failure_reason(
    failure: tuple[ClientProxy, FitRes] | tuple[ClientProxy, EvaluateRes] | BaseException,
) -> str:
    if isinstance(failure, BaseException):
        return str(failure)[:300]
    return str(failure[1].status.message)[:300]
