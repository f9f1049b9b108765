"""Cut one dataset into per-partner data mounts for a demo federation (``deploy/data/partner-<k>/``).

A real partner already has its own CSV files; the demo starts from one dataset whose ``users.csv`` names each
user's store. Partner ``k`` (1-based, stores in sorted order) gets the whole catalog (``items.csv`` is public
and fixes the item indices every side shares) and the interactions of its own users only. ``federation/`` gets
a copy of the full dataset: what the central team's ServerApp reads (``dataset`` run-config key) for the
catalog, the population size and the store count in this demo.

Usage: ``python deploy/split_partners.py DATASET_DIR OUT_DIR``.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from pathlib import Path

PARTNER_PREFIX = "partner-"
FEDERATION_DIR = "federation"
INTERACTIONS, ITEMS, USERS = "interactions.csv", "items.csv", "users.csv"


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def split_partners(dataset: Path, out: Path) -> list[Path]:
    """Write ``out/partner-<k>/`` per store of ``users.csv`` and ``out/federation/``; returns partner dirs."""
    for name in (INTERACTIONS, ITEMS, USERS):
        if not (dataset / name).is_file():
            raise FileNotFoundError(f"{dataset / name}: missing (a demo split needs {USERS} with a store "
                                    "column)")
    _, users = _read(dataset / USERS)
    store_of = {row["user_id"].strip(): row["store"].strip() for row in users}
    stores = sorted(set(store_of.values()))
    fields, interactions = _read(dataset / INTERACTIONS)
    directories = []
    for k, store in enumerate(stores, start=1):
        directory = out / f"{PARTNER_PREFIX}{k}"
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(dataset / ITEMS, directory / ITEMS)
        with (directory / INTERACTIONS).open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(r for r in interactions if store_of.get(r["user_id"].strip()) == store)
        directories.append(directory)
    (out / FEDERATION_DIR).mkdir(parents=True, exist_ok=True)
    for name in (INTERACTIONS, ITEMS, USERS):
        shutil.copyfile(dataset / name, out / FEDERATION_DIR / name)
    return directories


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Split a dataset into per-partner data mounts.")
    parser.add_argument("dataset", type=Path, help="directory with interactions.csv, items.csv, users.csv")
    parser.add_argument("out", type=Path, help="where partner-<k>/ directories are written")
    args = parser.parse_args(argv)
    try:
        for directory in split_partners(args.dataset, args.out):
            print(directory)
    except (FileNotFoundError, KeyError) as exc:
        print(f"split_partners: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
