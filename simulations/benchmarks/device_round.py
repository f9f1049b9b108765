"""One store's local round on CPU and on CUDA in the same process: proves the GPU path of every privacy mode
(non-private, user-level DP-FedAvg with vmap'd per-user runs, record-level Opacus DP-SGD with ghost clipping)
and gives the CPU/CUDA time ratio. Ends with one JSON line.

It calls the store's trainer (``client.trainers.train_store``) directly, without Flower, so it runs where only
torch and Opacus are installed (a GPU box). ``--catalog-features`` takes precomputed MiniLM catalog
embeddings (``.npy``) for machines that lack the packaged encoder.

    .venv/bin/python -m simulations.benchmarks.device_round [--modes none user interaction] [--all-users]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from client.trainers import train_store
from shared.config import from_mapping, parse_assignment
from shared.device import pick_device
from shared.ledger import PrivacyLedger
from shared.model import NeuMF, get_shared, set_shared
from shared.workload import catalog_features, initial_parameters, load_workload, model_shape, users_of_store
from simulations.tune_user_level import load_catalog_features

MODES = ("none", "user", "interaction")


def _time_round(config: Any, split: Any, features: np.ndarray | None, device: torch.device, round_: int
                ) -> tuple[float, float, float]:
    """Seconds of one local round, the update's L2 norm and the store's ε after it (fresh ledger)."""
    shape = model_shape(config, split.n_items, features)
    torch.manual_seed(config.seed)
    model = NeuMF(split.n_users, shape, None if features is None else torch.as_tensor(features))
    set_shared(model, initial_parameters(config, shape, features))
    model = model.to(device)
    ledger = PrivacyLedger(delta=config.delta)
    rng = np.random.default_rng([config.seed, round_])
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    update = train_store(model, split, config, ledger, round_, rng, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    norm = float(np.sqrt(sum(float(np.sum(a.astype(np.float64) ** 2)) for a in update.arrays)))
    if not np.isfinite(norm):
        raise RuntimeError(f"{config.privacy} on {device}: the update is not finite")
    expected = [a.shape for a in get_shared(model)]
    if [a.shape for a in update.arrays] != expected:
        raise RuntimeError(f"{config.privacy} on {device}: update shapes differ from the shared parameters")
    return seconds, norm, ledger.epsilon() if ledger.entries else 0.0


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--store", type=int, default=0, help="which store's users (default partition)")
    parser.add_argument("--all-users", action="store_true", help="every user of the dataset in one store")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per device (after one warm-up)")
    parser.add_argument("--catalog-features", help="precomputed catalog text embeddings (.npy)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    base = dict(parse_assignment(a) for a in args.set)
    config = from_mapping({**base, "device": "cpu"})
    workload = load_workload(config)
    users = (np.arange(workload.split.n_users) if args.all_users else users_of_store(config, args.store))
    split = workload.split.subset(users)
    features = (load_catalog_features(Path(args.catalog_features)) if args.catalog_features
                else catalog_features(config))
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    result: dict[str, Any] = {"benchmark": "device_round", "users": len(users),
                              "interactions": len(split.train_items),
                              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                              "torch": torch.__version__}
    for mode in args.modes:
        for device_name in devices:
            mode_config = from_mapping({**base, "privacy": mode, "device": device_name})
            device = pick_device(mode_config)
            _time_round(mode_config, split, features, device, round_=1)  # warm-up (CUDA context, kernels)
            runs = [_time_round(mode_config, split, features, device, round_=2 + r)
                    for r in range(args.repeats)]
            seconds = statistics.median(r[0] for r in runs)
            result[f"{mode}_{device_name}_s"] = round(seconds, 4)
            result[f"{mode}_{device_name}_update_norm"] = round(statistics.median(r[1] for r in runs), 4)
            result[f"{mode}_{device_name}_epsilon"] = round(runs[-1][2], 4)
            print(f"{mode:<12}{device_name:<6}{seconds:8.3f} s  update norm "
                  f"{result[f'{mode}_{device_name}_update_norm']}", flush=True)
        if "cuda" in devices:
            result[f"{mode}_cpu_over_cuda"] = round(result[f"{mode}_cpu_s"] / result[f"{mode}_cuda_s"], 2)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
