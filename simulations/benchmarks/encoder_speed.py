"""Text encoder and cold-start fast-path speed on this CPU; ends with one JSON line.

1. Catalog encoding, items/s at 1 vs 2 torch threads, interleaved batch by batch so that load from other
   processes hits both equally; also items per CPU-second (less sensitive to sharing). The ratio is what
   to read on a shared machine: absolute numbers move with the load.
2. New item from text to servable (encode one text + place it with the mapping), p50/p99 over distinct texts.
3. The online calls of the service: ``score`` of a few hundred candidates and ``fit_user_from_clicks``.

    .venv/bin/python -m simulations.benchmarks.encoder_speed [--items 1024] [--latency-runs 200]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

import numpy as np
import torch

from shared.cold_start import ItemMapping, average_user, catalog_item_vectors, fit_user_from_clicks, score
from shared.config import from_mapping
from shared.model import ModelShape, NeuMF
from shared.text_encoder import BATCH_SIZE, TextEncoder, model_dir
from shared.workload import load_workload

THREAD_SETTINGS = (1, 2)
CANDIDATES = 300
CLICK_COUNTS = (1, 5, 50)
FOLD_IN_STEPS = 30
FOLD_IN_RATE = 0.05


def percentiles(samples: list[float], prefix: str) -> dict[str, float]:
    ms = np.array(samples) * 1e3
    return {f"{prefix}p{q}_ms": round(float(np.percentile(ms, q)), 3) for q in (50, 99)}


def timed(call: Callable[[], object], runs: int) -> dict[str, float]:
    """Wall-clock and CPU-time percentiles: on a shared, oversubscribed machine the wall clock mostly measures
    waiting for a core; the process CPU time is closer to what an idle serving host would see."""
    call()  # warm-up
    wall, cpu = [], []
    for _ in range(runs):
        wall_started, cpu_started = time.perf_counter(), time.process_time()
        call()
        wall.append(time.perf_counter() - wall_started)
        cpu.append(time.process_time() - cpu_started)
    return {**percentiles(wall, ""), **percentiles(cpu, "cpu_")}


def catalog_speed(encoders: dict[int, TextEncoder], texts: list[str]) -> dict[str, dict[str, float]]:
    wall = dict.fromkeys(encoders, 0.0)
    cpu = dict.fromkeys(encoders, 0.0)
    for index, start in enumerate(range(0, len(texts), BATCH_SIZE)):
        batch = texts[start:start + BATCH_SIZE]
        order = list(encoders) if index % 2 == 0 else list(reversed(encoders))
        for threads in order:
            wall_started, cpu_started = time.perf_counter(), time.process_time()
            encoders[threads].encode(batch)
            wall[threads] += time.perf_counter() - wall_started
            cpu[threads] += time.process_time() - cpu_started
    return {str(t): {"items_per_s": round(len(texts) / wall[t], 1),
                     "items_per_cpu_s": round(len(texts) / cpu[t], 1)} for t in encoders}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1024, help="catalog items to encode per thread setting")
    parser.add_argument("--latency-runs", type=int, default=200)
    args = parser.parse_args()
    config = from_mapping({})
    dataset = load_workload(config).dataset
    texts = [dataset.item_text(i) for i in range(dataset.n_items)][:args.items]
    directory = model_dir(config.text_encoder)
    encoders = {threads: TextEncoder(directory, threads) for threads in THREAD_SETTINGS}
    speed = catalog_speed(encoders, texts)
    ratio = speed["1"]["items_per_s"] / speed["2"]["items_per_s"]
    cpu_ratio = speed["1"]["items_per_cpu_s"] / speed["2"]["items_per_cpu_s"]
    print(f"catalog encoding ({len(texts)} items): 1 thread {speed['1']}, 2 threads {speed['2']}; "
          f"1-thread/2-thread items/s ratio {ratio:.2f}, per CPU-second {cpu_ratio:.2f}", flush=True)

    torch.manual_seed(0)
    shape = ModelShape(n_items=dataset.n_items, gmf_dim=config.gmf_dim, mlp_dim=config.mlp_dim,
                       hidden=config.hidden_layers, item_tower="text", feature_dim=encoders[1].dim)
    model = NeuMF(1, shape, torch.randn(dataset.n_items, encoders[1].dim)).eval()
    width = config.gmf_dim + config.mlp_dim + 1
    rng = np.random.default_rng(0)
    mapping = ItemMapping(rng.normal(size=(encoders[1].dim, width)), rng.normal(size=width), config.gmf_dim,
                          config.mlp_dim)  # random weights: the same arithmetic as a fitted mapping
    new_items = iter(f"{text} (new edition {i})" for i in range(args.latency_runs + 1) for text in texts[:1])
    new_item = timed(lambda: mapping.place(encoders[1].encode_one(next(new_items))), args.latency_runs)
    print(f"new item text → servable vectors (1 thread): {new_item}", flush=True)

    catalog = catalog_item_vectors(model)
    user = average_user(model)
    candidates = catalog.take(rng.choice(len(catalog), CANDIDATES, replace=False))
    rerank = timed(lambda: score(model, user, candidates), args.latency_runs)
    fold_in = {str(n): timed(lambda n=n: fit_user_from_clicks(  # type: ignore[misc]
        model, catalog, np.arange(n) * 7, steps=FOLD_IN_STEPS, learning_rate=FOLD_IN_RATE, seed=0,
        start=user), args.latency_runs // 4) for n in CLICK_COUNTS}
    print(f"score {CANDIDATES} candidates: {rerank}; fold-in ({FOLD_IN_STEPS} steps) by clicks: {fold_in}")
    print(json.dumps({
        "benchmark": "encoder_speed", "items": len(texts), "catalog_encoding": speed,
        "one_thread_over_two_items_per_s": round(ratio, 2),
        "one_thread_over_two_per_cpu_s": round(cpu_ratio, 2),
        "new_item_text_to_servable": new_item, "new_item_goal_p99_ms": 30,
        f"score_{CANDIDATES}_candidates": rerank, "fold_in_by_clicks": fold_in,
        "load_average_1min": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
