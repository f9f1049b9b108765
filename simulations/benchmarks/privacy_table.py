"""The privacy/utility table: ItemPop, non-private centralized NeuMF, user-level DP at several ε and
record-level DP, on the same split, mean over seeds, each with its ratio to non-private centralized NeuMF.

Every federated row runs the real Flower apps (SecAgg+ on unless overridden). Ends with one JSON line.

    .venv/bin/python -m simulations.benchmarks.privacy_table --seeds 0 1 2 --epsilons 1 3 8
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

from shared.config import from_mapping, parse_assignment
from simulations.centralized import item_popularity, train_centralized
from simulations.simulate import simulate

METRICS = ("hr@10", "ndcg@10", "hr@10_full", "ndcg@10_full")
CENTRAL_EPOCHS = 20
DEFAULT_DATASET = "ml-100k"


def _mean_row(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {"setting": name, "runs": len(runs)}
    for metric in METRICS:
        row[metric] = statistics.mean(float(r[metric]) for r in runs)
    if "epsilon" in runs[0]:
        row["epsilon"] = max(float(r["epsilon"]) for r in runs)
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0])
    parser.add_argument("--record-epsilon", type=float, default=8.0, help="0 skips the record-level row")
    parser.add_argument("--central-epochs", type=int, default=CENTRAL_EPOCHS)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override for the user-level runs")
    parser.add_argument("--record-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override for the record-level runs")
    parser.add_argument("--eps-set", action="append", default=[], metavar="EPS:KEY=VALUE",
                        help="override for the user-level run at one ε (settings picked on validation)")
    parser.add_argument("--text-central", action="store_true", help="also train the text tower centrally")
    parser.add_argument("--dataset", default=DEFAULT_DATASET,
                        help="every row's dataset (e.g. a population from simulations.synthetic_population)")
    args = parser.parse_args(argv)
    data = {"dataset": args.dataset}
    user_overrides = {"privacy": "user", **data, **dict(parse_assignment(a) for a in args.set)}
    record_overrides = {"privacy": "interaction", "item-tower": "id", **data,
                        **dict(parse_assignment(a) for a in args.record_set)}
    rows = []
    base = from_mapping({"privacy": "none", "item-tower": "id", **data})  # the reference: NeuMF as published
    rows.append(_mean_row("ItemPop", [item_popularity(base)]))
    central = [train_centralized(base.replace(seed=s), args.central_epochs, verbose=False)
               for s in args.seeds]
    rows.append(_mean_row(f"NeuMF centralized, non-private ({args.central_epochs} epochs)", central))
    print(json.dumps(rows[-1]), flush=True)
    if args.text_central:
        text_tower = [train_centralized(base.replace(seed=s, item_tower="text"), args.central_epochs,
                                        verbose=False) for s in args.seeds]
        rows.append(_mean_row("NeuMF text tower centralized, non-private", text_tower))
        print(json.dumps(rows[-1]), flush=True)
    per_epsilon: dict[float, dict[str, Any]] = {}
    for item in args.eps_set:
        epsilon, assignment = item.split(":", 1)
        key, value = parse_assignment(assignment)
        per_epsilon.setdefault(float(epsilon), {})[key] = value
    for epsilon in args.epsilons:
        settings = {**user_overrides, **per_epsilon.get(epsilon, {}), "target-epsilon": epsilon}
        runs = [simulate(from_mapping({**settings, "seed": s})) for s in args.seeds]
        rows.append(_mean_row(f"user-level DP, ε={epsilon:g}", runs))
        print(json.dumps(rows[-1]), flush=True)
    if args.record_epsilon > 0:
        runs = [simulate(from_mapping({**record_overrides, "target-epsilon": args.record_epsilon, "seed": s}))
                for s in args.seeds]
        rows.append(_mean_row(f"record-level DP (Opacus), ε={args.record_epsilon:g}", runs))
        print(json.dumps(rows[-1]), flush=True)
    reference = rows[1]
    header = "| setting | ε | " + " | ".join(f"{m} (ratio)" for m in METRICS) + " |"
    print(header)
    print("|" + "---|" * (2 + len(METRICS)))
    for row in rows:
        cells = [f"{row[m]:.4f} ({row[m] / reference[m]:.2f}×)" for m in METRICS]
        print(f"| {row['setting']} | {row.get('epsilon', '∞' if 'non-private' in row['setting'] else '-')} | "
              + " | ".join(cells) + " |")
    result = {"benchmark": "privacy_table", "dataset": args.dataset, "seeds": args.seeds,
              "user_overrides": user_overrides,
              "per_epsilon_overrides": {str(k): v for k, v in per_epsilon.items()},
              "record_overrides": record_overrides, "rows": rows}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
