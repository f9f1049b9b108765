"""A partner store as a Flower ``NumPyClient``: local data, private user embeddings, local training.

Only the shared parameters' update leaves the store (``fit`` returns a delta, or in user-level DP mode the
clipped, noised sum of its users' deltas), packed into one vector (shared/wire.py) as the global parameters
arrive. User embeddings stay in the store's state directory.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.client import NumPyClient

from client.serving.interaction_log import with_logged_clicks
from client.state import StoreState
from client.trainers import LocalUpdate, train_store
from shared.config import RunConfig
from shared.device import pick_device
from shared.evaluation import HeldOut, evaluate_held_out
from shared.messages import EVALUATE_ROUND_KEY, EVALUATED_PREFIX, NOISE_KEY, ROUND_KEY, RUN_DIR_KEY
from shared.model import PRIVATE_PARAMETERS, NeuMF, set_shared, shared_parameter_shapes
from shared.split import Split
from shared.wire import pack, unpack
from shared.workload import catalog_features, load_workload, model_shape, users_of_store

EVAL_SPLITS: tuple[HeldOut, ...] = ("valid", "test")
EVAL_PREFIXES = ("valid/", "test/")
STORES_CACHED = 1024  # simulated stores whose data a process keeps (the stores partition the dataset)


@dataclass(frozen=True)
class StoreData:
    """The store's own users: their train interactions, held-out items and evaluation candidates."""

    split: Split
    negatives: np.ndarray
    features: np.ndarray | None = None  # public catalog text embeddings (text/hybrid item towers)
    item_ids: tuple[str, ...] = ()  # raw catalog ids, to read the service's click log (empty: no log)

    @property
    def user_ids(self) -> np.ndarray:
        return np.asarray(self.split.user_ids)


@functools.lru_cache(maxsize=STORES_CACHED)
def store_data(config: RunConfig, store: int) -> StoreData:
    """One simulated store's data, built once per process: Flower calls ``client_fn`` for every message (five
    per SecAgg+ round), and rebuilding it each time cost ~10 ms of a Ray actor's time per message."""
    workload = load_workload(config)
    users = users_of_store(config, store)
    return StoreData(workload.split.subset(users), workload.negatives[users], catalog_features(config),
                     workload.dataset.item_ids)


class PrivateTensorLeak(RuntimeError):
    """An outgoing message would carry a private tensor; the store refuses to send it."""


class StoreClient(NumPyClient):
    def __init__(self, config: RunConfig, store: int, data: StoreData, state_dir: Path | None) -> None:
        self.config = config
        self.store = store
        self.data = data
        self.state_dir = state_dir
        self.device = pick_device(config)
        self.shape = model_shape(config, data.split.n_items, data.features)
        self.features = None if data.features is None else torch.as_tensor(data.features)

    # -- state ---------------------------------------------------------------------------------------------
    def _directory(self, config: dict[str, Any]) -> Path:
        if self.state_dir is not None:
            return self.state_dir
        run_dir = config.get(RUN_DIR_KEY)
        if not run_dir:
            raise ValueError("no state directory: set state-dir (node config or run config) or run-dir")
        return Path(str(run_dir)) / "stores" / f"store-{self.store}"

    def _model(self, parameters: list[np.ndarray], state: StoreState) -> NeuMF:
        torch.manual_seed(self.config.seed * 1_000_003 + self.store)
        model = NeuMF(self.data.split.n_users, self.shape, self.features)
        set_shared(model, unpack(parameters, shared_parameter_shapes(model)))
        if state.embeddings is not None:
            params = dict(model.named_parameters())
            with torch.no_grad():
                for name in PRIVATE_PARAMETERS:
                    params[name].copy_(torch.as_tensor(state.embeddings[_file_key(name)]))
        return model.to(self.device)

    # -- Flower --------------------------------------------------------------------------------------------
    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        raise RuntimeError("the server owns the initial shared parameters; stores never send theirs whole")

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict]:
        # fold-evaluation: the incoming model is round r's, and the private state is still as round r left it,
        # so this is exactly the evaluation a separate message would have asked for after round r.
        evaluated = self.evaluate(parameters, config)[2] if EVALUATE_ROUND_KEY in config else {}
        started = time.perf_counter()
        round_ = int(config[ROUND_KEY])
        directory = self._directory(config)
        state = StoreState.load(directory, self.data.user_ids, self.config.delta)
        model = self._model(parameters, state)
        rng = np.random.default_rng([self.config.seed, round_, self.store])
        announced = config.get(NOISE_KEY)
        # Clicks logged by the recommendation service are extra positives; evaluation is unchanged.
        split = with_logged_clicks(self.data.split, self.data.item_ids, directory)
        update: LocalUpdate = train_store(model, split, self.config, state.ledger, round_, rng,
                                          self.device, None if announced is None else float(announced))
        state.embeddings = {_file_key(n): p.detach().cpu().numpy() for n, p in model.named_parameters()
                            if n in PRIVATE_PARAMETERS}
        self._refuse_private(update.arrays, state.embeddings)
        self._refuse_out_of_range(update.arrays)
        state.save()  # ledger (and embeddings) on disk before anything leaves the store
        metrics: dict[str, Any] = {"store": self.store, "loss": update.loss,
                                   "diverged_users": update.diverged, "epsilon": state.ledger.epsilon(),
                                   "seconds": time.perf_counter() - started}
        if state.ledger.entries and state.ledger.entries[-1].round == round_:
            last = state.ledger.entries[-1]
            metrics.update(noise_multiplier=last.noise_multiplier, sample_rate=last.sample_rate,
                           steps=last.steps)
        metrics.update({EVALUATED_PREFIX + key: value for key, value in evaluated.items()})
        return pack(update.arrays), update.weight, metrics

    def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[float, int, dict]:
        state = StoreState.load(self._directory(config), self.data.user_ids, self.config.delta)
        model = self._model(parameters, state)
        model.eval()
        metrics: dict[str, float] = {"store": self.store}
        results = evaluate_held_out(model.score_all_items, self.data.split, self.data.negatives, EVAL_SPLITS,
                                    self.config.top_k, self.device)
        for which, prefix in zip(EVAL_SPLITS, EVAL_PREFIXES, strict=True):
            metrics.update({prefix + k: v for k, v in results[which][0].items()})
        users = int(metrics["test/users"])
        return 0.0, users, metrics

    def _refuse_out_of_range(self, arrays: list[np.ndarray]) -> None:
        """SecAgg+ silently clips values to ±secagg-clipping-range; a store never lets that bias the sum."""
        if not self.config.secagg:
            return
        peak = max((float(np.abs(a).max()) for a in arrays if a.size), default=0.0)
        if not peak <= self.config.secagg_clipping_range:
            raise ValueError(f"update value {peak:.4g} exceeds secagg-clipping-range "
                             f"{self.config.secagg_clipping_range}; raise it (SecAgg+ would clip silently)")

    @staticmethod
    def _refuse_private(arrays: list[np.ndarray], private: dict[str, np.ndarray]) -> None:
        for array in arrays:
            for name, tensor in private.items():
                if array.shape == tensor.shape and np.allclose(array, tensor):
                    raise PrivateTensorLeak(f"outgoing array equals private {name} {tensor.shape}")


def _file_key(parameter_name: str) -> str:
    return parameter_name.split(".")[0]
