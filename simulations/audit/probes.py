"""The attacks of ``attacks.py`` applied to a finished fedrec run (its ``model.npz`` and stores' state).

Membership inference, two targets, labelled as such in the report:
- **released model** — what ε bounds: the shared parameters that left the stores. The attacker has no user
  embedding (those never leave a store), so it scores pairs with a zero user vector: the item side of the
  released model (item bias, item tower, MLP).
- **personalized model at the store** — the released model plus the store's own user embeddings, which train
  without noise at the store (joint DP, docs/privacy.md). ε does *not* bound this one: whoever holds a store's
  embeddings already holds the store's data.

Item-set inference from one client's update: for ``clients`` users, the update a one-user client would send
from the run's final global model (the same local training, clipping and noise code as ``client/user_dp.py``),
seen (a) plainly without clipping or noise (plain FedAvg), (b) clipped with the full noise σC (DP without
SecAgg+), (c) as SecAgg+ delivers it: masked (σC/√K noise share inside), and (d) the sum over all ``clients``
clients, the only thing SecAgg+ lets the server unmask.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.config import RunConfig
from shared.model import PRIVATE_PARAMETERS, NeuMF, set_shared, shared_names
from shared.workload import Workload, catalog_features, load_workload, model_shape, users_of_store
from simulations.audit.attacks import (
    item_set_metrics,
    item_signal,
    masked_update,
    membership_auc,
    membership_pairs,
)

UPDATE_VIEWS = ("plain", "dp", "secagg_masked", "secagg_sum")
NON_MEMBERS = "for each member, the item nearest in train popularity that the user never interacted with"


def load_run_model(run_dir: Path, config: RunConfig, workload: Workload) -> NeuMF:
    """The run's final shared model over all users, with every store's private user embeddings filled in."""
    features = catalog_features(config)
    shape = model_shape(config, workload.split.n_items, features)
    model = NeuMF(workload.split.n_users, shape, None if features is None else torch.as_tensor(features))
    with np.load(run_dir / "model.npz") as saved:
        set_shared(model, [saved[name] for name in shared_names(model)])
    params = dict(model.named_parameters())
    stores_dir = run_dir / "stores"
    with torch.no_grad():
        for store_dir in sorted(stores_dir.glob("store-*")):
            store = int(store_dir.name.split("-", 1)[1])
            path = store_dir / "user_embeddings.npz"
            if not path.exists():
                continue
            users = torch.as_tensor(users_of_store(config, store))
            with np.load(path) as data:
                for name in PRIVATE_PARAMETERS:
                    params[name][users] = torch.as_tensor(data[name.split(".")[0]])
    model.eval()
    return model


@torch.no_grad()
def _pair_scores(model: NeuMF, users: np.ndarray, items: np.ndarray, zero_users: bool) -> np.ndarray:
    users_t, items_t = torch.as_tensor(users), torch.as_tensor(items)
    if not zero_users:
        return model(users_t, items_t).numpy()
    saved = {n: p.detach().clone() for n, p in model.named_parameters() if n in PRIVATE_PARAMETERS}
    try:
        for n, p in model.named_parameters():
            if n in PRIVATE_PARAMETERS:
                p.zero_()
        return model(users_t, items_t).numpy()
    finally:
        for n, p in model.named_parameters():
            if n in saved:
                p.copy_(saved[n])


def membership_inference(run_dir: Path, config: RunConfig, max_users: int, seed: int) -> dict[str, Any]:
    """AUC of the score-threshold attack (members = one train interaction per user, non-members = a
    popularity-matched item the user never interacted with) on the released and on the personalized model."""
    workload = load_workload(config)
    split = workload.split
    model = load_run_model(run_dir, config, workload)
    rng = np.random.default_rng([seed, 7])
    users = rng.permutation(split.n_users)[:max_users]
    interacted = [
        {*split.user_train_items(u).tolist(), int(split.valid_items[u]), int(split.test_items[u])}
        for u in range(split.n_users)
    ]
    counts = np.bincount(split.train_items, minlength=split.n_items).astype(np.float64)
    users, members, nonmembers = membership_pairs(
        split.train_indptr, split.train_items, interacted, counts, users, rng
    )
    out: dict[str, Any] = {"pairs": len(users), "non_members": NON_MEMBERS}
    for target, zero in (("released", True), ("personalized", False)):
        out[f"auc_{target}"] = membership_auc(
            _pair_scores(model, users, members, zero), _pair_scores(model, users, nonmembers, zero)
        )
    # reference: the same attack with train popularity as the score (no model at all)
    out["auc_popularity_reference"] = membership_auc(counts[members], counts[nonmembers])
    return out


def one_user_update(
    model: NeuMF, workload: Workload, user: int, config: RunConfig, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """The unclipped shared-parameter delta of one user's local run (client/user_dp.py's local training)."""
    from client.user_dp import local_user_runs
    from shared.training import TrainPairs

    deltas, _, _ = local_user_runs(
        model,
        workload.split,
        TrainPairs(workload.split),
        np.asarray([user]),
        config,
        rng,
        torch.device("cpu"),
    )
    return {name: d[0].detach().numpy().astype(np.float64) for name, d in deltas.items()}


def _clip(update: dict[str, np.ndarray], norm: float) -> dict[str, np.ndarray]:
    total = math.sqrt(sum(float((a**2).sum()) for a in update.values()))
    factor = min(1.0, norm / (total + 1e-12))
    return {n: a * factor for n, a in update.items()}


def _noised(update: dict[str, np.ndarray], std: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {n: a + rng.normal(0.0, std, a.shape) if std > 0 else a.copy() for n, a in update.items()}


def item_set_inference(run_dir: Path, config: RunConfig, clients: int, seed: int) -> dict[str, Any]:
    """Mean precision/recall/AUC of the item-set attack over ``clients`` one-user clients, per view."""
    from shared.privacy import federation_noise_multiplier, noise_shares

    workload = load_workload(config)
    split = workload.split
    model = load_run_model(run_dir, config, workload)
    sigma = federation_noise_multiplier(config) if config.privacy == "user" else 0.0
    clip = config.clipping_norm if config.privacy == "user" else math.inf
    share_std = sigma * config.clipping_norm / math.sqrt(noise_shares(config)) if sigma else 0.0
    rng = np.random.default_rng([seed, 11])
    users = rng.permutation(split.n_users)[:clients]
    names = shared_names(model)
    per_view: dict[str, list[dict[str, float]]] = {view: [] for view in UPDATE_VIEWS}
    shares: list[dict[str, np.ndarray]] = []
    for user in users:
        update = one_user_update(model, workload, int(user), config, rng)
        truth = split.user_train_items(int(user))
        per_view["plain"].append(item_set_metrics(item_signal(update, split.n_items), truth))
        clipped = _clip(update, clip) if math.isfinite(clip) else update
        alone = _noised(clipped, sigma * config.clipping_norm, rng)
        per_view["dp"].append(item_set_metrics(item_signal(alone, split.n_items), truth))
        share = _noised(clipped, share_std, rng)
        shares.append(share)
        masked = masked_update(
            [share[n] for n in names],
            config.secagg_clipping_range,
            config.secagg_quantization_range,
            2**32,
            rng,
        )
        per_view["secagg_masked"].append(
            item_set_metrics(
                item_signal(dict(zip(names, masked, strict=True)), split.n_items),
                truth,
                threshold=float(2**31),
            )
        )  # "moved up" on the masked integers: above half the modulus
    total = {n: np.sum([s[n] for s in shares], axis=0) for n in names}
    signal = item_signal(total, split.n_items)
    for user in users:
        per_view["secagg_sum"].append(item_set_metrics(signal, split.user_train_items(int(user))))
    summary: dict[str, Any] = {
        "clients": len(users),
        "noise_multiplier": sigma,
        "noise_std_alone": sigma * config.clipping_norm,
        "noise_std_share": share_std,
    }
    for view, rows in per_view.items():
        summary[view] = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
    return summary
