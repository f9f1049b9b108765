"""PROTOCOL.md, federated evaluation: the user-weighted mean of the stores' sums equals a central evaluation
of the same embeddings."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from server.strategy import aggregate_store_metrics
from shared.config import RunConfig
from shared.evaluation import evaluate
from shared.metrics import mean_metrics
from shared.model import PRIVATE_PARAMETERS, ModelShape, NeuMF, get_shared, set_shared
from shared.workload import load_workload, number_of_stores, users_of_store


def random_model(n_users: int, shape: ModelShape, seed: int) -> NeuMF:
    """A NeuMF with spread-out random weights (the 0.01 init would make many scores nearly tie)."""
    torch.manual_seed(seed)
    model = NeuMF(n_users, shape)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 1.0)
    return model.eval()


def store_model(central: NeuMF, users: np.ndarray) -> NeuMF:
    """The store's view: the global shared parameters plus its own users' rows of the private embeddings."""
    local = NeuMF(len(users), central.shape)
    set_shared(local, get_shared(central))
    central_params, local_params = dict(central.named_parameters()), dict(local.named_parameters())
    with torch.no_grad():
        for name in PRIVATE_PARAMETERS:
            local_params[name].copy_(central_params[name][torch.as_tensor(users)])
    return local.eval()


@pytest.mark.parametrize("partition", ["stores-file", "iid"])
def test_federated_evaluation_equals_central_evaluation(make_config: Callable[..., RunConfig],
                                                        partition: str) -> None:
    config = make_config(partition=partition, num_stores=4)
    workload = load_workload(config)
    split, negatives = workload.split, workload.negatives
    central = random_model(split.n_users, ModelShape.from_config(config, split.n_items), seed=11)

    expected: dict[str, float] = {}
    for which in ("valid", "test"):
        sums, _ = evaluate(central.score_all_items, split, negatives, which, config.top_k)
        expected.update({f"{which}/{k}": v for k, v in mean_metrics(sums).items()})

    store_metrics = []
    for store in range(number_of_stores(config)):
        users = users_of_store(config, store)
        local = store_model(central, users)
        metrics: dict[str, float] = {}
        for which in ("valid", "test"):
            sums, _ = evaluate(local.score_all_items, split.subset(users), negatives[users], which,
                               config.top_k)
            metrics.update({f"{which}/{k}": v for k, v in sums.items()})
        store_metrics.append(metrics)
    federated = aggregate_store_metrics(store_metrics)

    assert federated.keys() == expected.keys()
    assert federated["test/users"] == 30.0
    for key, value in expected.items():
        assert federated[key] == pytest.approx(value, abs=1e-9), key
    assert 0.0 < expected["test/hr@10"] < 1.0  # the model is neither perfect nor constant: a real comparison
