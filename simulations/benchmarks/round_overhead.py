"""Steady-state round time: plain FedAvg vs SecAgg+ vs user-level DP (+SecAgg+), at 10 and 50 stores.

Each setting runs the real Flower simulation for a few rounds; round 1 (Ray and actor start-up) is dropped and
the median of the remaining rounds is taken, with each ratio against the plain run at the same store count —
all in this process. These machines drift by ±30 % within minutes, so by default the settings run twice, in
palindromic order (plain, SecAgg+, DP, DP + SecAgg+, then back), and each setting's time is the mean of its
two passes: a drift that is linear over the sequence then weighs on every setting alike. Ends with one JSON
line.

    .venv/bin/python -m simulations.benchmarks.round_overhead [--stores 10 50] [--rounds 4] [--passes 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from shared.config import from_mapping, parse_assignment
from simulations.simulate import simulate

SETTINGS = {
    "plain": {"privacy": "none", "secagg": False},
    "secagg": {"privacy": "none", "secagg": True},
    "user-dp": {"privacy": "user", "secagg": False},
    "user-dp+secagg": {"privacy": "user", "secagg": True},
}


def steady_round_seconds(run_dir: str) -> float:
    history = json.loads((Path(run_dir) / "metrics.json").read_text())
    seconds = [h["seconds"] for h in history if "seconds" in h][1:]
    return statistics.median(seconds)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--passes", type=int, choices=(1, 2), default=2,
                        help="2: run the settings forward then backward, average each setting's two passes")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    extra = dict(parse_assignment(a) for a in args.set)
    result: dict[str, Any] = {"benchmark": "round_overhead", "rounds": args.rounds, "passes": args.passes,
                              "overrides": extra}
    for stores in args.stores:
        partition = {"partition": "iid", "num-stores": stores}
        shares = stores if stores <= 11 else 11  # SecAgg+ wants an odd share count below the store count
        secagg = {"secagg-num-shares": shares, "secagg-reconstruction-threshold": shares - 2,
                  "noise-share-stores": shares - 2}
        order = list(SETTINGS) + (list(reversed(SETTINGS)) if args.passes == 2 else [])
        passes: dict[str, list[float]] = {name: [] for name in SETTINGS}
        for name in order:
            config = from_mapping({**partition, **secagg, **SETTINGS[name], "num-rounds": args.rounds,
                                   "sigma-from-target": False, "noise-multiplier": 1.0, **extra})
            passes[name].append(steady_round_seconds(simulate(config)["run_dir"]))
            print(f"{stores} stores {name:<15} {passes[name][-1]:.2f} s/round", flush=True)
        times = {name: statistics.mean(seconds) for name, seconds in passes.items()}
        result[f"{stores}_stores"] = {
            "seconds": times,
            "passes": passes,
            "secagg_over_plain": times["secagg"] / times["plain"],
            "user_dp_over_plain": times["user-dp"] / times["plain"],
            "user_dp_secagg_over_user_dp": times["user-dp+secagg"] / times["user-dp"],
        }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
