"""The central team's Flower ``ServerApp``: thin wiring of strategy, SecAgg+ workflow and run record.

SecAgg+ in flwr 1.41 works only through the legacy API (``LegacyContext`` + ``DefaultWorkflow(fit_workflow=
SecAggPlusWorkflow(...))`` with a legacy strategy), see ``research/flower_probe.md``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

from flwr.app import Context
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.superlink.grid import InMemoryGrid

from server.optimizer import ServerOptimizer
from server.run_record import RunRecord
from server.strategy import FedRecStrategy, RoundFailed
from shared import secagg
from shared.config import ConfigError, RunConfig, from_mapping
from shared.model import NeuMF, shared_names
from shared.threads import limit_math_threads
from shared.workload import catalog_features, initial_parameters, load_workload, model_shape, number_of_stores

log = logging.getLogger("fedrec.server")
RUNS_ROOT = Path("runs")
SIMULATION_PULL_SECONDS = 0.02  # how often the ServerApp looks for replies in simulation (Flower: 0.1 s)


def new_run_dir(config: RunConfig, run_id: int | str | None = None) -> Path:
    if config.run_dir:
        return Path(config.run_dir)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return RUNS_ROOT / (f"{stamp}-{run_id}" if run_id is not None else stamp)


def check_privacy_config(config: RunConfig, population: int, interactions: int) -> None:
    """δ must be well below 1/N for the DP unit's N, or the guarantee is vacuous."""
    units = population if config.privacy == "user" else interactions
    if config.privacy != "none" and config.delta >= 1.0 / units:
        raise ConfigError(f"delta: {config.delta} must be < 1/N = {1.0 / units:.3g} "
                          f"(N = {units} {'users' if config.privacy == 'user' else 'interactions'})")


def checked_population(config: RunConfig) -> int:
    """N of user-level DP-FedAvg (``population``, or the dataset's users), once δ passed
    ``check_privacy_config``; ``simulate`` calls it too, so a bad δ fails before Ray starts."""
    workload = load_workload(config)
    population = config.population or workload.split.n_users
    check_privacy_config(config, population, len(workload.split.train_users))
    return population


def check_secagg_config(config: RunConfig, num_stores: int) -> None:
    """Flower 1.41's SecAgg+ gives each store ``num_shares`` neighbours on a ring; an even count smaller than
    the number of stores makes its clients fail with an IndexError at key sharing (and the round halt)."""
    if config.secagg and config.secagg_num_shares < num_stores and config.secagg_num_shares % 2 == 0:
        raise ConfigError(f"secagg-num-shares: {config.secagg_num_shares} must be odd when smaller than the "
                          f"number of stores ({num_stores})")


def run_server(grid: Grid, context: Context, config: RunConfig) -> dict:
    """Run (or resume) the federation to ``num-rounds``; returns the summary (also run_dir/summary.json)."""
    limit_math_threads(config.torch_threads)  # small linear algebra; see shared/threads.py
    workload = load_workload(config)
    population = checked_population(config)
    num_stores = number_of_stores(config)
    check_secagg_config(config, num_stores)
    features = catalog_features(config)
    shape = model_shape(config, workload.split.n_items, features)
    run_dir = new_run_dir(config, context.run_id)
    record = RunRecord.open(run_dir, config, shared_names(NeuMF(1, shape)))
    if record.resumed_from is not None:
        shared = record.resumed_from.shared
        optimizer = ServerOptimizer.from_config(config, record.resumed_from.optimizer,
                                                int(record.resumed_from.meta.get("optimizer_steps", 0)))
        print(f"resuming {run_dir} after round {record.completed_round}", flush=True)
    else:
        shared = initial_parameters(config, shape, features)
        optimizer = ServerOptimizer.from_config(config)
    strategy = FedRecStrategy(config, record, shared, optimizer, num_stores, population)
    if record.planned_rounds == 0:
        return record.finish(strategy.shared, "completed",
                             "nothing to do: the run already reached num-rounds")
    fit_workflow = None
    if config.secagg:
        secagg.install()  # fedrec's Shamir sharing and full-strength masks (shared/secagg.py)
        fit_workflow = SecAggPlusWorkflow(
            num_shares=config.secagg_num_shares,
            reconstruction_threshold=config.secagg_reconstruction_threshold,
            clipping_range=config.secagg_clipping_range, quantization_range=config.secagg_quantization_range,
            max_weight=_max_weight(config, workload.split))
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=record.planned_rounds),
                           strategy=strategy)
    try:
        DefaultWorkflow(fit_workflow=fit_workflow)(grid, legacy)
        if not strategy.budget_stop and len(strategy.aggregated) < record.planned_rounds:
            raise RoundFailed("the last round produced no aggregate (secure aggregation halted?)")
    except Exception as exc:
        record.finish(strategy.shared, "failed", f"{type(exc).__name__}: {exc}")
        log.error("run failed: %s", exc)
        raise
    status = "stopped-by-budget" if strategy.budget_stop else "completed"
    return record.finish(strategy.shared, status, strategy.budget_stop or "")


def _max_weight(config: RunConfig, split) -> float:  # type: ignore[no-untyped-def]
    """SecAgg+ quantizes ``num_examples / max_weight``; user/record DP stores report weight 1."""
    return 1.0 if config.privacy != "none" else float(len(split.train_users))


def poll_replies_sooner(grid: Grid) -> None:
    """In simulation, look for a stage's replies every 20 ms instead of Flower's 100 ms.

    Why: the ServerApp waits for each exchange by polling Flower's in-memory grid, idling up to a whole
    interval after the last reply lands; a SecAgg+ round is five exchanges, a plain one two. The interval is
    an ``InMemoryGrid`` constructor argument that ``run_simulation`` leaves at its default; a poll is a dict
    lookup in this process. A deployment's grid is untouched.
    """
    if isinstance(grid, InMemoryGrid):
        grid.pull_interval = SIMULATION_PULL_SECONDS


def build_server_app(config: RunConfig | None = None, print_summary: bool = True) -> ServerApp:
    """The ServerApp; ``config`` overrides ``context.run_config`` (the Python simulation API carries none)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_config = config or from_mapping(dict(context.run_config))
        poll_replies_sooner(grid)
        summary = run_server(grid, context, run_config)
        if print_summary:
            print(json.dumps(summary), flush=True)

    return app


app = build_server_app()
