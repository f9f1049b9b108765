"""Top-10 ``Recommend`` latency in-process at 10k, 100k and 1M items: two-stage (cluster-index retrieval +
NeuMF re-ranking) against exact NumPy retrieval + the same re-ranking, in this process, back to back.

Reports p50/p99 per size for both, the ratio exact/served, and the index's recall@10 against exact retrieval
(stage one, same query) and the top-10 overlap of the two final lists. Synthetic clustered vectors, 32-d GMF
(serving_synthetic.py); one math thread (client/serving/threads.py). Ends with one JSON line.

    .venv/bin/python -m simulations.benchmarks.serve_latency [--sizes 10000 100000 1000000] [--queries 2000]
        [--clusters 0 (4·√items)] [--probes 0 (tuned)] [--probe-sweep 8 16 32]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from client.serving.engine import Recommender
from client.serving.retrieval import ClusterIndex, exact_top, retrieval_queries
from client.serving.retrieval import recall_at_k as retrieval_recall
from client.serving.settings import ServeSettings
from shared.threads import limit_math_threads
from simulations.benchmarks.serving_synthetic import USERS, synthetic_model, synthetic_recommender

K = 10
WARMUP = 50
EXACT_ONLY = 10**12  # ann_min_items that keeps every catalog on exact retrieval (the baseline)


def latencies_ms(recommender: Recommender, users: list[str]) -> np.ndarray:
    for user in users[:WARMUP]:
        recommender.recommend(user, K)
    out = np.empty(len(users))
    for n, user in enumerate(users):
        started = time.perf_counter()
        recommender.recommend(user, K)
        out[n] = (time.perf_counter() - started) * 1e3
    return out


def summary(values: np.ndarray) -> dict[str, float]:
    return {"p50_ms": round(float(np.percentile(values, 50)), 4),
            "p99_ms": round(float(np.percentile(values, 99)), 4)}


def recall_at_k(served: Recommender, exact: Recommender, users: list[str]) -> tuple[float, float]:
    """(stage-one recall@10 of the index vs exact retrieval, as the service's tuning measures it; overlap@10
    of the final lists)."""
    snap = served.snapshot
    rows = snap.space.retrieval.view()
    queries = retrieval_queries(snap.model.users.gmf[[snap.model.user_row[u] for u in users]],
                                snap.model.gmf_output_weight)
    retrieval = retrieval_recall(snap.index, queries, exact_top(rows, queries, K), len(rows))
    final = [len({i.item_id for i in served.recommend(user, K).items}
                 & {i.item_id for i in exact.recommend(user, K).items}) / K for user in users]
    return retrieval, float(np.mean(final))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--recall-queries", type=int, default=300)
    parser.add_argument("--clusters", type=int, default=ServeSettings().ann_clusters,
                        help="the index's k-means clusters (0 = 4 x the square root of the catalog size)")
    parser.add_argument("--probes", type=int, default=ServeSettings().ann_probes,
                        help="clusters scored per search (0 = tuned to the recall target)")
    parser.add_argument("--probe-sweep", type=int, nargs="*", default=[],
                        help="also measure these probe counts on the same index (recall, p50/p99)")
    args = parser.parse_args(argv)
    limit_math_threads()
    rng = np.random.default_rng(0)
    settings = ServeSettings(ann_clusters=args.clusters, ann_probes=args.probes)
    result: dict[str, Any] = {"benchmark": "serve_latency", "k": K, "settings": {
        "candidates": settings.candidates, "ann_min_items": settings.ann_min_items,
        "ann_clusters": settings.ann_clusters, "ann_probes": settings.ann_probes,
        "ann_recall_target": settings.ann_recall_target}}
    for size in args.sizes:
        model, text = synthetic_model(size)
        started = time.perf_counter()
        served = synthetic_recommender(model, text[:, :8], settings)
        build_s = time.perf_counter() - started
        exact = synthetic_recommender(model, text[:, :8], settings.replace(ann_min_items=EXACT_ONLY))
        users = [f"u{n}" for n in rng.integers(0, USERS, args.queries)]
        served_ms, exact_ms = latencies_ms(served, users), latencies_ms(exact, users)
        recall, overlap = recall_at_k(served, exact, users[:args.recall_queries])
        entry = {"retrieval": type(served.snapshot.index).__name__, "index_build_s": round(build_s, 1),
                 "served": summary(served_ms), "exact_numpy": summary(exact_ms),
                 "exact_over_served_p50": round(float(np.median(exact_ms) / np.median(served_ms)), 2),
                 "retrieval_recall_at_10": round(recall, 4), "final_overlap_at_10": round(overlap, 4)}
        index = served.snapshot.index
        if isinstance(index, ClusterIndex):
            entry["clusters"] = index.width.clusters
            entry["probes"] = index.width.probes
            tuned = index.width.recall_at_10
            entry["probes_tuned_recall_at_10"] = None if tuned is None else round(tuned, 4)
            entry["probes_tuning_s"] = round(index.width.tuning_s, 2)
            sweep = {}
            for probes in args.probe_sweep:
                index.set_probes(probes)
                recall_p, overlap_p = recall_at_k(served, exact, users[:args.recall_queries])
                sweep[str(probes)] = {**summary(latencies_ms(served, users)), "retrieval_recall_at_10":
                                      round(recall_p, 4), "final_overlap_at_10": round(overlap_p, 4)}
            if sweep:
                entry["probe_sweep"] = sweep
        result[str(size)] = entry
        print(f"{size:>9} items: {json.dumps(entry)}", flush=True)
        del served, exact, model, text
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
