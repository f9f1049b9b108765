"""Small catalogs: score every item with NeuMF, or retrieve candidates and re-rank them? The measurement
behind ``ServeSettings.score_all_below``.

Times ``Recommend`` top-10 in this process, both ways back to back on the same recommender data:
``--score-all-below 0`` (two-stage: exact inner-product retrieval of ``candidates``, NeuMF re-ranking) and
scoring the whole catalog. Reports per catalog size the best-of-3 mean µs per call and the ratio
score-all / two-stage. Synthetic clustered vectors (serving_synthetic.py), one math thread.

With ``--run-dir`` (a finished ML-100K run, e.g. ``make run``'s) it also serves every store's shoppers from
the trained model both ways and reports how often the two top-10 lists agree (mean overlap@10, share of
identical lists) and the same timing ratio: whether two-stage loses anything on a real model. Ends with one
JSON line.

    .venv/bin/python -m simulations.benchmarks.score_all_crossover [--sizes 256 512 1024 1682 4096]
        [--calls 1500] [--run-dir runs/<run>]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from client.serving.engine import Recommender
from client.serving.settings import ServeSettings
from shared.threads import limit_math_threads
from simulations.benchmarks.serving_synthetic import USERS, synthetic_model, synthetic_recommender

K = 10
REPEATS = 3
WARMUP = 200
SCORE_ALL = 10**12  # score_all_below that keeps every catalog on the score-everything path
WAYS = {"two_stage": 0, "score_all": SCORE_ALL}


def mean_call_us(recommender: Recommender, users: list[str], calls: int) -> float:
    """Best of ``REPEATS`` passes of ``calls`` requests (mean µs per call): the machine's noise only adds."""
    for user in users[:WARMUP]:
        recommender.recommend(user, K)
    best = float("inf")
    for repeat in range(REPEATS):
        order = [users[(repeat * calls + n) % len(users)] for n in range(calls)]
        started = time.perf_counter()
        for user in order:
            recommender.recommend(user, K)
        best = min(best, (time.perf_counter() - started) / calls * 1e6)
    return best


def timing_fields(timings: dict[str, float]) -> dict[str, float]:
    """µs per call both ways, and their ratio (from the unrounded timings)."""
    return {**{f"{way}_us": round(us, 1) for way, us in timings.items()},
            "score_all_over_two_stage": round(timings["score_all"] / timings["two_stage"], 2)}


def synthetic_sizes(sizes: list[int], calls: int) -> list[dict[str, Any]]:
    rows = []
    users = [f"u{n}" for n in np.random.default_rng(0).integers(0, USERS, WARMUP + calls)]
    for size in sizes:
        model, text = synthetic_model(size)
        timings = {way: mean_call_us(synthetic_recommender(model, text[:, :8],
                                                           ServeSettings(port=0, score_all_below=limit)),
                                     users, calls)
                   for way, limit in WAYS.items()}
        rows.append({"items": size, **timing_fields(timings)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def trained_model(run_dir: Path, calls: int) -> dict[str, Any]:
    """Every store of ``run_dir`` served both ways from its trained model: list agreement and timing."""
    from client.serving.bootstrap import open_run_store, run_embedder

    stores = sorted(p.name.removeprefix("store-") for p in (run_dir / "stores").glob("store-*"))
    embedder = run_embedder(run_dir, stores[0])  # loaded once for every store
    overlap, identical, timings = [], [], {way: 0.0 for way in WAYS}
    catalog = 0
    for store in stores:
        served = {way: open_run_store(run_dir, store, ServeSettings(port=0, score_all_below=limit),
                                      embedder).recommender
                  for way, limit in WAYS.items()}
        users = sorted(served["two_stage"].snapshot.model.user_row)
        catalog = served["two_stage"].info().catalog_size
        for user in users:
            lists = [[item.item_id for item in served[way].recommend(user, K).items] for way in WAYS]
            overlap.append(len(set(lists[0]) & set(lists[1])) / K)
            identical.append(lists[0] == lists[1])
        if store == stores[0]:
            timings = {way: mean_call_us(served[way], users, calls) for way in WAYS}
    return {"run_dir": str(run_dir), "items": catalog, "shoppers": len(overlap),
            "mean_overlap_at_10": round(float(np.mean(overlap)), 4),
            "min_overlap_at_10": round(float(np.min(overlap)), 4),
            "identical_lists": round(float(np.mean(identical)), 4),
            **timing_fields(timings)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 1682, 4096])
    parser.add_argument("--calls", type=int, default=1500)
    parser.add_argument("--run-dir", type=Path, help="also compare both ways on this trained run's stores")
    args = parser.parse_args(argv)
    limit_math_threads()
    result: dict[str, Any] = {"benchmark": "score_all_crossover", "k": K,
                              "candidates": ServeSettings().candidates,
                              "synthetic": synthetic_sizes(args.sizes, args.calls)}
    if args.run_dir is not None:
        result["trained"] = trained_model(args.run_dir, args.calls)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
