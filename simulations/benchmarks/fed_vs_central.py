"""Federated (stores, user embeddings local) vs centralized NeuMF on the same split, mean over seeds.

Both sides use the same config (learning rate, batch size, negatives, model); the centralized model trains for
``--central-epochs`` epochs (NCF's usual 20). The federated side runs the real Flower apps on the Simulation
Engine. Ends with one JSON line.

    .venv/bin/python -m simulations.benchmarks.fed_vs_central --seeds 0 1 2 [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

from shared.config import from_mapping, parse_assignment
from simulations.centralized import train_centralized
from simulations.simulate import simulate

METRICS = ("hr@10", "ndcg@10", "hr@10_full", "ndcg@10_full")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--central-epochs", type=int, default=20)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    overrides = dict(parse_assignment(a) for a in args.set)
    overrides.setdefault("privacy", "none")
    overrides.setdefault("secagg", False)
    rows = []
    for seed in args.seeds:
        config = from_mapping({**overrides, "seed": seed})
        central = train_centralized(config, args.central_epochs, verbose=False)
        federated = simulate(config)
        row = {"seed": seed, "central": {m: central[m] for m in METRICS},
               "federated": {m: federated[m] for m in METRICS}, "federated_seconds": federated["seconds"],
               "central_seconds": central["seconds"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    result: dict[str, Any] = {"benchmark": "fed_vs_central", "seeds": args.seeds, "overrides": overrides,
                              "central_epochs": args.central_epochs}
    print(f"{'metric':<14}{'central':>10}{'federated':>11}{'ratio':>8}")
    for metric in METRICS:
        central_mean = statistics.mean(r["central"][metric] for r in rows)
        fed_mean = statistics.mean(r["federated"][metric] for r in rows)
        result[metric] = {"central": central_mean, "federated": fed_mean, "ratio": fed_mean / central_mean}
        print(f"{metric:<14}{central_mean:>10.4f}{fed_mean:>11.4f}{fed_mean / central_mean:>8.3f}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
