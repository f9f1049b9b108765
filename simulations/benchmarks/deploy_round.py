"""Wall time of one federated round: 3-node TLS deployment (loopback) vs the same round in simulation.

Both run here, back to back, on the same data and run config (SecAgg+, user-level DP, three stores): first
``fedrec simulate`` (Flower's Simulation Engine), then the docker-compose commands as local processes
(``simulations/loopback.py``: SuperLink with TLS + node authentication, three partners through
``deploy/partner.py``, ``flwr run``). Round 1 (Ray start-up, first FAB install) is dropped; the median of the
later rounds (``metrics.json``'s per-round seconds: training and federated evaluation, which with
``fold-evaluation`` is the time from one round's start to the next's, the last round evaluating on its own) is
reported with the ratio deployment / simulation. Ends with one JSON line.

    .venv/bin/python -m simulations.benchmarks.deploy_round [--rounds 4] [--workload tiny|ml-100k]
        [--dataset DIR] [--set key=value] [--superlink-state file|memory]

Two workloads: ``tiny`` (the default: the tests' synthetic dataset and a tiny model, so the round is
almost all Flower's messaging) and ``ml-100k`` (the main job's: MovieLens-100K with its ten regions dealt to
the three partners, and pyproject's default model, so the round also holds real local training).
``--dataset`` runs the tiny model on another dataset instead (it needs ``users.csv``, one store per user).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from shared.config import from_mapping, parse_assignment
from simulations.loopback import Deployment, split_partners
from simulations.simulate import simulate

DEFAULT_ROUNDS = 4
RUN_TIMEOUT_S = 1800.0
PARTNERS = ("partner-1", "partner-2", "partner-3")
# Three stores: SecAgg+ shares among all three, any two reconstruct, noise split over two stores.
FEDERATION_CONFIG: dict[str, Any] = {
    "partition": "stores-file", "num-stores": len(PARTNERS), "privacy": "user", "secagg": True,
    "secagg-num-shares": 3, "secagg-reconstruction-threshold": 2, "noise-share-stores": 2, "device": "cpu",
}
TINY_MODEL: dict[str, Any] = {"gmf-dim": 4, "mlp-dim": 8, "mlp-layers": "16,8", "item-tower": "id"}
WORKLOADS = ("tiny", "ml-100k")


def movielens_three_partners(out: Path) -> Path:
    """ML-100K with the main job's ten stores (regions, users.csv) dealt round-robin to three partners."""
    from shared.datasets import movielens_100k

    source = movielens_100k()
    out.mkdir(parents=True, exist_ok=True)
    for name in ("interactions.csv", "items.csv"):
        shutil.copyfile(source / name, out / name)
    with (source / "users.csv").open(newline="", encoding="utf-8") as handle:
        users = list(csv.DictReader(handle))
    regions = sorted({row["store"] for row in users})
    partner_of = {region: PARTNERS[n % len(PARTNERS)] for n, region in enumerate(regions)}
    with (out / "users.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "store"])
        writer.writerows((row["user_id"], partner_of[row["store"]]) for row in users)
    return out


def round_seconds(run_dir: Path) -> list[float]:
    return [h["seconds"] for h in json.loads((run_dir / "metrics.json").read_text()) if "seconds" in h]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"'{value}'"
    return str(value)


def run_deployment(root: Path, dataset: Path, values: dict[str, Any],
                   durable_state: bool = False) -> list[float]:
    partitions = split_partners(dataset, root / "partitions")
    deployment = Deployment(root / "deployment", PARTNERS, durable_state=durable_state)
    run_dir = root / "deploy-run"
    try:
        deployment.start_superlink()
        deployment.start_serverapp_side()
        for store, (name, data_dir) in enumerate(zip(PARTNERS, partitions, strict=True)):
            deployment.start_partner(name, data_dir, store)
        overrides = " ".join(f"{k}={_toml_value(v)}" for k, v in {**values, "run-dir": str(run_dir)}.items())
        done = deployment.run(overrides, timeout=RUN_TIMEOUT_S, watch=True)
        if done.returncode != 0 or not (run_dir / "summary.json").exists():
            raise RuntimeError(f"deployment run failed: {done.stdout[-3000:]}{done.stderr[-3000:]}")
    finally:
        deployment.stop()
    return round_seconds(run_dir)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--workload", choices=WORKLOADS, default="tiny",
                        help="tiny: messaging only; ml-100k: the main job's data and model (docstring)")
    parser.add_argument("--dataset", type=Path, help="the tiny model on this dataset (needs users.csv)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--superlink-state", choices=("file", "memory"), default="memory",
                        help="memory: Flower's in-memory state, as docker-compose.yml ships it; file: SQLite")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fedrec-deploy-round-") as tmp:
        root = Path(tmp)
        dataset, model = args.dataset, TINY_MODEL
        if args.workload == "ml-100k":
            if dataset is not None:
                parser.error("--dataset goes with the tiny workload only")
            dataset, model = movielens_three_partners(root / "data"), {}
        elif dataset is None:
            from tests.conftest import write_tiny_dataset

            dataset = write_tiny_dataset(root / "data")
        values = {**FEDERATION_CONFIG, **model, "dataset": str(dataset.resolve()), "num-rounds": args.rounds,
                  **dict(parse_assignment(a) for a in args.set)}
        started = time.perf_counter()
        simulation = round_seconds(Path(simulate(from_mapping({**values, "run-dir": str(root / "sim-run")}))
                                        ["run_dir"]))
        simulation_wall = time.perf_counter() - started
        started = time.perf_counter()
        deployment = run_deployment(root, dataset, values, durable_state=args.superlink_state == "file")
        deployment_wall = time.perf_counter() - started
    sim_round, dep_round = statistics.median(simulation[1:]), statistics.median(deployment[1:])
    workload = args.workload if args.dataset is None else str(args.dataset)
    result = {"benchmark": "deploy_round", "workload": workload, "rounds": args.rounds,
              "nodes": len(PARTNERS), "tls": True, "node_auth": True, "secagg": True,
              "superlink_state": args.superlink_state, "simulation_round_s": sim_round,
              "deployment_round_s": dep_round, "ratio": dep_round / sim_round,
              "simulation_rounds_s": simulation, "deployment_rounds_s": deployment,
              "simulation_wall_s": simulation_wall, "deployment_wall_s": deployment_wall}
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
