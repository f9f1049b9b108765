"""A fast proxy of the user-level DP federation, for choosing its settings on *validation* items.

Why a proxy: a Flower simulation of ML-100K costs 60-75 s here, much of it Ray start-up and message passing,
and it takes both cores. This runs the same store trainer (``client.trainers.train_store``, so the same
per-user runs, clipping, noise and refit) and the same server optimizer in one process and one thread, with
one store holding every user. So two settings can run side by side on two cores, in 25-60 s each.

What differs from the federation, so its numbers are for comparing settings, never for a results table:
- one store adds the whole noise σ²C² (K = 1). The federation's SecAgg+ sum of S stores, each adding σ²C²/K,
  carries S/K times that (1.25× with the default 10 stores and K = 8);
- no SecAgg+ quantization (far below the noise, docs/privacy.md);
- one random stream for all users, so a seed's draws differ from the federation's.

It prints one JSON line: the validation sampled and full-ranking HR@10 after each round, the ε spent, and the
share of non-finite scores (a diverged model, which the metrics count as misses).

    .venv/bin/python -m simulations.tune_user_level --set user-sample-rate=1.0 --set server-learning-rate=0.2

A sweep runs many settings × seeds in parallel processes (one torch thread each), e.g. on a many-core box,
printing one JSON line per run and a last line with each setting's means; the file is a JSON list of
``{"name": ..., "seeds": [...], "set": {KEY: VALUE}}`` (simulations/tuning/ holds the ones used):

    .venv/bin/python -m simulations.tune_user_level --sweep simulations/tuning/session7.json --processes 16

``--catalog-features`` takes the catalog's MiniLM embeddings precomputed (``.npy``, rows in item order), for a
many-core box that lacks the packaged encoder.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from client.trainers import train_store
from server.optimizer import ServerOptimizer
from shared.config import RunConfig, from_mapping, parse_assignment
from shared.evaluation import evaluate
from shared.ledger import PrivacyLedger
from shared.metrics import mean_metrics
from shared.model import NeuMF, set_shared
from shared.privacy import user_level_estimate
from shared.workload import catalog_features, initial_parameters, load_workload, model_shape


def tune_run(config: RunConfig, features: np.ndarray | None = None) -> dict[str, Any]:
    """Train ``config.num_rounds`` rounds of the proxy; returns the validation curve and the final state.

    ``features`` replaces the catalog text embeddings the encoder would compute (same rows, same order).
    """
    if config.privacy != "user":
        raise ValueError(f"privacy: the proxy runs user-level DP only, got {config.privacy!r}")
    if config.secagg:
        # One store stands for the federation: under SecAgg+ a store adds only 1/K of the noise variance, so
        # the proxy would train with sqrt(K) times too little noise and flatter every setting.
        raise ValueError("secagg: the proxy is one store and must add the whole noise; set secagg = false")
    torch.set_num_threads(config.torch_threads)
    workload = load_workload(config)
    split = workload.split
    if features is None or config.item_tower == "id":
        features = catalog_features(config)
    elif features.shape[0] != split.n_items:
        raise ValueError(f"catalog features: {features.shape[0]} rows for {split.n_items} items")
    shape = model_shape(config, split.n_items, features)
    torch.manual_seed(config.seed)
    model = NeuMF(split.n_users, shape, None if features is None else torch.as_tensor(features))
    shared = initial_parameters(config, shape, features)
    set_shared(model, shared)
    optimizer = ServerOptimizer.from_config(config)
    ledger = PrivacyLedger(delta=config.delta)
    device = torch.device("cpu")
    sampled, full = [], []
    started = time.perf_counter()
    for round_ in range(1, config.num_rounds + 1):
        rng = np.random.default_rng([config.seed, round_])
        update = train_store(model, split, config, ledger, round_, rng, device)
        shared = optimizer.step(shared, user_level_estimate(update.arrays, config, split.n_users))
        set_shared(model, shared)
        model.eval()
        sums, _ = evaluate(model.score_all_items, split, workload.negatives, "valid", config.top_k, device)
        model.train()
        metrics = mean_metrics(sums)
        sampled.append(round(metrics[f"hr@{config.top_k}"], 4))
        full.append(round(metrics[f"hr@{config.top_k}_full"], 4))
    with torch.no_grad():
        scores = model.eval().score_all_items(torch.arange(split.n_users))
    return {"valid_hr": sampled[-1], "valid_hr_full": full[-1], "epsilon": round(ledger.epsilon(), 3),
            "non_finite_scores": float((~torch.isfinite(scores)).float().mean()),
            "valid_hr_per_round": sampled, "valid_hr_full_per_round": full,
            "seconds": round(time.perf_counter() - started, 1)}


PROXY_SETTINGS = {"privacy": "user", "secagg": False, "device": "cpu"}  # one store adds the whole noise


def proxy_config(settings: dict[str, Any]) -> RunConfig:
    return from_mapping({**PROXY_SETTINGS, **settings})


def load_catalog_features(path: Path | None) -> np.ndarray | None:
    """Precomputed catalog text embeddings (``--catalog-features``, also device_round's), checked."""
    if path is None:
        return None
    try:
        features = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"{path}: cannot read the catalog features ({exc})") from exc
    if features.ndim != 2:
        raise SystemExit(f"{path}: catalog features must be a 2-D array [items, dim], not {features.shape}")
    return features.astype(np.float32)


def _sweep_job(job: tuple[str, int, dict[str, Any], Path | None]) -> dict[str, Any]:
    name, seed, settings, features = job  # tune_run sets the torch threads (torch-threads, 1 by default)
    return {"name": name, "seed": seed,
            **tune_run(proxy_config({**settings, "seed": seed}), load_catalog_features(features))}


def sweep_jobs(path: Path) -> list[tuple[str, int, dict[str, Any]]]:
    """(name, seed, settings) per run of a sweep file; every entry is checked before anything runs."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"{path}: cannot read the sweep ({exc})") from exc
    if not isinstance(entries, list):
        raise SystemExit(f"{path}: expected a JSON list of settings")
    jobs = []
    for position, entry in enumerate(entries):
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)
                and isinstance(entry.get("seeds"), list) and isinstance(entry.get("set", {}), dict)):
            raise SystemExit(f"{path}: entry {position} needs name (text), seeds (list) and set (object)")
        for seed in entry["seeds"]:
            proxy_config({**entry.get("set", {}), "seed": seed})  # a bad key or value fails here, naming it
            jobs.append((entry["name"], int(seed), dict(entry.get("set", {}))))
    return jobs


def run_sweep(path: Path, processes: int, features: Path | None = None) -> list[dict[str, Any]]:
    """Every run of the sweep in ``processes`` worker processes; returns per-setting means, best first."""
    jobs = [(*job, features) for job in sweep_jobs(path)]
    runs: list[dict[str, Any]] = []
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        for result in pool.imap_unordered(_sweep_job, jobs):
            print(json.dumps(result), flush=True)
            runs.append(result)
    summary = []
    for name in dict.fromkeys(job[0] for job in jobs):
        mine = [r for r in runs if r["name"] == name]
        summary.append({"name": name, "seeds": sorted(r["seed"] for r in mine),
                        "valid_hr": round(float(np.mean([r["valid_hr"] for r in mine])), 4),
                        "valid_hr_full": round(float(np.mean([r["valid_hr_full"] for r in mine])), 4),
                        "non_finite_scores": max(r["non_finite_scores"] for r in mine)})
    summary.sort(key=lambda row: -row["valid_hr"])
    print(json.dumps({"summary": summary}), flush=True)
    return summary


def main(argv: list[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--sweep", type=Path, help="a JSON list of settings to run in parallel (see above)")
    parser.add_argument("--processes", type=int, default=2, help="worker processes of a sweep")
    parser.add_argument("--catalog-features", type=Path, help="precomputed catalog text embeddings (.npy)")
    args = parser.parse_args(argv)
    if args.sweep is not None:
        if args.set:
            parser.error("--set and --sweep do not combine: put the settings in the sweep file")
        return run_sweep(args.sweep, max(1, args.processes), args.catalog_features)
    settings = dict(parse_assignment(a) for a in args.set)
    features = load_catalog_features(args.catalog_features)
    result = {"settings": settings, **tune_run(proxy_config(settings), features)}
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
