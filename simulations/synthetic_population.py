"""A synthetic shopper population ``factor`` times larger than a source dataset, in fedrec's CSV format.

Why: user-level DP noise is fixed per round while the signal grows with the number of shoppers, so the cost
of privacy should shrink as the population grows (issue 4). ML-100K has 943 shoppers; no public dataset with
the same catalog text is 20x larger, so we make one. Each synthetic shopper follows one source shopper's
taste: it keeps each of the source's interactions with probability ``keep`` (same item, same timestamp) and
replaces the others by items drawn from the catalog's popularity. Shoppers cloned from one source are thus
different people with a similar taste, not copies (with ``keep`` = 0.8 two clones share ~64 % of their items),
and each keeps the source's store, so the stores-file partition grows 20x too. The catalog (items.csv with
its text) is the source's, unchanged.

    .venv/bin/python -m simulations.synthetic_population --factor 20 --out /tmp/ml-100k-x20
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from shared.data import INTERACTIONS_FILE, ITEMS_FILE, USERS_FILE, Dataset, load_dataset

DEFAULT_KEEP = 0.8


def synthesize(dataset: Dataset, factor: int, seed: int, keep: float = DEFAULT_KEEP
               ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(user ids, user index, item index, timestamp) of the synthetic interactions, one (user, item) once.

    User ``i * factor + c`` is clone ``c`` of source user ``i``."""
    if factor < 1:
        raise ValueError(f"factor: must be >= 1, got {factor}")
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep: must be in (0, 1], got {keep}")
    rng = np.random.default_rng(seed)
    popularity = np.bincount(dataset.items, minlength=dataset.n_items).astype(np.float64)
    popularity /= popularity.sum()
    n = len(dataset.users)
    users = (dataset.users[None, :] * factor + np.arange(factor)[:, None]).ravel()
    items = np.tile(dataset.items, factor)
    timestamps = np.tile(dataset.timestamps, factor)
    replaced = rng.random(n * factor) >= keep
    items[replaced] = rng.choice(dataset.n_items, size=int(replaced.sum()), p=popularity)
    _, first = np.unique(users * dataset.n_items + items, return_index=True)  # a shopper rates an item once
    first.sort()
    user_ids = [f"{source}-{clone}" for source in dataset.user_ids for clone in range(factor)]
    return user_ids, users[first], items[first], timestamps[first]


def write_population(source_dir: str | Path, out_dir: str | Path, factor: int, seed: int,
                     keep: float = DEFAULT_KEEP) -> Path:
    """Write interactions.csv, items.csv (the source's) and users.csv (stores, when the source has them)."""
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    dataset = load_dataset(source_dir)
    user_ids, users, items, timestamps = synthesize(dataset, factor, seed, keep)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / ITEMS_FILE).write_bytes((source_dir / ITEMS_FILE).read_bytes())
    with open(out_dir / INTERACTIONS_FILE, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["user_id", "item_id", "timestamp"])
        writer.writerows(zip((user_ids[u] for u in users), (dataset.item_ids[i] for i in items),
                             timestamps.tolist(), strict=True))
    if dataset.user_stores is not None:
        with open(out_dir / USERS_FILE, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["user_id", "store"])
            writer.writerows((user_id, dataset.user_stores[index // factor])
                             for index, user_id in enumerate(user_ids))
    return out_dir


def main(argv: list[str] | None = None) -> None:
    from shared.workload import dataset_directory

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="ml-100k", help="built-in dataset name or CSV directory")
    parser.add_argument("--factor", type=int, default=20)
    parser.add_argument("--keep", type=float, default=DEFAULT_KEEP)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    out = write_population(dataset_directory(args.source), args.out, args.factor, args.seed, args.keep)
    print(out)


if __name__ == "__main__":
    main()
