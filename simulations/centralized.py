"""``fedrec centralized``: NeuMF trained on everyone's data in one place — the non-private reference.

Same split, same negatives, same model and training code (shared/training.py) and the same evaluation
(shared/evaluation.py) as the federated run, so the federated/centralized ratio means something. ItemPop (rank
by training popularity) is reported by ``--model itempop``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from shared.config import RunConfig
from shared.device import pick_device
from shared.evaluation import evaluate
from shared.metrics import catalog_coverage, mean_metrics
from shared.model import NeuMF
from shared.split import Split
from shared.training import TrainPairs, TrainSettings, train_pointwise
from shared.workload import Workload, catalog_features, load_workload, model_shape

FEATURE_STREAM = 7  # the random stream of ``epoch_features``, apart from the negatives' stream


def _report(score_all_items: Any, split: Split, negatives: np.ndarray, config: RunConfig,
            device: torch.device, which: str = "test") -> dict[str, float]:
    sums, tops = evaluate(score_all_items, split, negatives, which, config.top_k, device)  # type: ignore[arg-type]
    metrics = mean_metrics(sums)
    metrics[f"coverage@{config.top_k}_full"] = catalog_coverage(tops, split.n_items)
    return metrics


def train_centralized(config: RunConfig, epochs: int, verbose: bool = True) -> dict[str, Any]:
    """Train for ``epochs`` epochs; returns test metrics of the last epoch plus the validation curve."""
    return train_model(config, load_workload(config), catalog_features(config), epochs, verbose)[1]


def train_model(config: RunConfig, workload: Workload, features: np.ndarray | None, epochs: int,
                verbose: bool = True,
                epoch_features: Callable[[np.random.Generator], np.ndarray] | None = None
                ) -> tuple[NeuMF, dict[str, Any]]:
    """``train_centralized`` on a given workload (e.g. one with cold items held out); returns the trained
    model (eval mode) and its metrics. ``epoch_features(rng)``, if given, supplies the text features each
    epoch trains on (a cold-start probe drops titles at random); evaluation and the returned model use
    ``features``."""
    started = time.perf_counter()
    device = pick_device(config)
    split, negatives = workload.split, workload.negatives
    torch.manual_seed(config.seed)
    shape = model_shape(config, split.n_items, features)
    # a copy: ``epoch_features`` overwrite the model's buffer, which must not be the caller's array
    model = NeuMF(split.n_users, shape, None if features is None else torch.tensor(features)).to(device)
    pairs, rng = TrainPairs(split), np.random.default_rng(config.seed)
    settings = TrainSettings(1, config.batch_size, config.learning_rate, config.num_negatives)
    curve = []
    feature_rng = np.random.default_rng([config.seed, FEATURE_STREAM])
    for epoch in range(1, epochs + 1):
        if epoch_features is not None:
            _set_features(model, epoch_features(feature_rng))
        loss = train_pointwise(model, pairs, settings, rng, device)
        if epoch_features is not None and features is not None:
            _set_features(model, features)
        model.eval()
        valid = _report(model.score_all_items, split, negatives, config, device, "valid")
        curve.append({"epoch": epoch, "loss": loss, f"valid/hr@{config.top_k}": valid[f"hr@{config.top_k}"]})
        if verbose:
            hit_ratio = valid[f"hr@{config.top_k}"]
            print(f"epoch {epoch}/{epochs} loss {loss:.4f} hr@{config.top_k} {hit_ratio:.4f} "
                  f"(valid) {time.perf_counter() - started:.1f}s", flush=True)
    model.eval()
    result = _report(model.score_all_items, split, negatives, config, device)
    return model, {"model": "neumf", **result, "epochs": epochs, "curve": curve, "seed": config.seed,
                   "torch_threads": config.torch_threads, "seconds": round(time.perf_counter() - started, 2),
                   "split": split.fingerprint()}


def _set_features(model: NeuMF, features: np.ndarray) -> None:
    buffer: torch.Tensor = model.item_features  # type: ignore[assignment]  # a registered buffer
    buffer.copy_(torch.as_tensor(features))


def item_popularity(config: RunConfig) -> dict[str, Any]:
    """ItemPop: every user gets the catalog ranked by training popularity."""
    device = torch.device("cpu")
    split = load_workload(config).split
    counts = torch.as_tensor(np.bincount(split.train_items, minlength=split.n_items), dtype=torch.float32)

    def score(users: torch.Tensor) -> torch.Tensor:
        return counts.expand(len(users), -1)

    return {"model": "itempop", **_report(score, split, load_workload(config).negatives, config, device),
            "split": split.fingerprint()}
