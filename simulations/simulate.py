"""``fedrec simulate``: the main job on Flower's Simulation Engine (Ray), with the same apps as ``flwr run``.

The Python simulation API carries no ``run_config``, so the validated config is handed to the apps directly;
``flwr run .`` reaches the same apps through ``context.run_config`` with the same keys.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from shared.config import ConfigError, RunConfig
from shared.workload import load_workload, number_of_stores

RAY_CPUS_PER_CLIENT = 1


class SimulationFailed(RuntimeError):
    pass


def simulate(config: RunConfig, verbose: bool = False) -> dict[str, Any]:
    """Run the federation in-process on Ray; returns the summary dict (raises SimulationFailed on failure)."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("OMP_NUM_THREADS", str(config.torch_threads))
    from flwr.simulation import run_simulation

    from client.app import build_client_app
    from server.app import build_server_app, checked_population, new_run_dir
    from simulations import engine_feed

    engine_feed.install()  # the engine's feeder: one cheap scan every 10 ms (simulations/engine_feed.py)

    load_workload(config)  # fetch/validate the data once, before any Ray worker starts
    checked_population(config)  # an invalid δ is a ConfigError naming it, not a failed run inside Ray
    if not config.run_dir:
        config = config.replace(run_dir=str(new_run_dir(config)))
    run_dir = Path(config.run_dir)
    stores = number_of_stores(config)
    cpus = os.cpu_count() or 1
    started = time.perf_counter()
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    try:
        run_simulation(
            server_app=build_server_app(config, print_summary=False),
            client_app=build_client_app(config),
            num_supernodes=stores,
            backend_name="ray",
            backend_config={"client_resources": {"num_cpus": RAY_CPUS_PER_CLIENT, "num_gpus": 0.0},
                            "init_args": {"num_cpus": cpus, "include_dashboard": False,
                                          "logging_level": logging.ERROR, "log_to_driver": verbose}},
            verbose_logging=verbose,
        )
    except ConfigError:
        raise
    except Exception as exc:  # flwr 1.41 re-raises the ServerApp's exception (RoundFailed, ...) here
        raise SimulationFailed(f"{type(exc).__name__}: {exc}") from exc
    summary_path = run_dir / "summary.json"
    if not summary_path.exists():
        raise SimulationFailed(f"the run wrote no summary ({summary_path}); see the log above")
    summary = json.loads(summary_path.read_text())
    summary["seconds"] = round(time.perf_counter() - started, 2)
    if summary.get("status") == "failed":
        raise SimulationFailed(summary.get("message", "run failed"))
    return summary
