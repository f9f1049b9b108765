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
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch

from client.trainers import train_store
from server.optimizer import ServerOptimizer
from shared.config import RunConfig, from_mapping, parse_assignment
from shared.evaluation import evaluate
from shared.ledger import PrivacyLedger
from shared.metrics import mean_metrics
from shared.model import NeuMF, initial_shared, set_shared
from shared.privacy import user_level_estimate
from shared.workload import catalog_features, load_workload, model_shape


def tune_run(config: RunConfig) -> dict[str, Any]:
    """Train ``config.num_rounds`` rounds of the proxy; returns the validation curve and the final state."""
    if config.privacy != "user":
        raise ValueError(f"privacy: the proxy runs user-level DP only, got {config.privacy!r}")
    if config.secagg:
        # One store stands for the federation: under SecAgg+ a store adds only 1/K of the noise variance, so
        # the proxy would train with sqrt(K) times too little noise and flatter every setting.
        raise ValueError("secagg: the proxy is one store and must add the whole noise; set secagg = false")
    torch.set_num_threads(config.torch_threads)
    workload = load_workload(config)
    split = workload.split
    features = catalog_features(config)
    shape = model_shape(config, split.n_items, features)
    torch.manual_seed(config.seed)
    model = NeuMF(split.n_users, shape, None if features is None else torch.as_tensor(features))
    shared = initial_shared(shape, config.seed)
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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    settings = dict(parse_assignment(a) for a in args.set)
    config = from_mapping({"privacy": "user", "secagg": False, "device": "cpu", **settings})
    result = {"settings": settings, **tune_run(config)}
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
