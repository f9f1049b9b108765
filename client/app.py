"""The partner's Flower ``ClientApp``: thin wiring; the work lives in client/store.py and the trainers.

In simulation a node knows its store by ``partition-id`` (users are assigned by shared/partition.py); in a
deployment a partner's SuperNode points ``data-dir`` at its own CSV files and ``state-dir`` at its volume.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from flwr.app import Context, Message
from flwr.client import Client, ClientApp
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable

from client.store import StoreClient, StoreData, store_data
from shared.config import RunConfig, from_mapping
from shared.data import Dataset, load_dataset
from shared.split import Split, leave_one_out, sampled_negatives
from shared.workload import NUM_EVAL_NEGATIVES, catalog_features

SECAGG_RECORD = "secaggplus_configs"
PARTNER_RUNS_DIR = "runs"
WARM_DATA_ENV = "FEDREC_WARM_DATA_DIR"  # set by deploy/partner.py for its SuperExec: the partner's data mount


def client_fn(context: Context, config: RunConfig | None = None) -> Client:
    config = config or from_mapping(dict(context.run_config))
    node = context.node_config
    if "data-dir" in node:  # a partner site: its own data, all of it
        dataset, split = partner_data(str(node["data-dir"]))
        data = StoreData(split, sampled_negatives(split, config.eval_seed, NUM_EVAL_NEGATIVES),
                         catalog_features(config, dataset), dataset.item_ids)
        store = int(node.get("store", 0))
    else:
        store = int(node["partition-id"])
        data = store_data(config, store)
    state_root = str(node.get("state-dir", "") or config.state_dir)
    state_dir = None
    if state_root:
        state_dir = (partner_state_dir(Path(state_root), config, context.run_id) if "data-dir" in node
                     else Path(state_root) / f"store-{store}")
    return StoreClient(config, store, data, state_dir).to_client()


def partner_data(data_dir: str) -> tuple[Dataset, Split]:
    """A partner's dataset and split, built once per process while its files stay the same.

    In a deployment every message runs in a fresh fork of the partner's SuperExec (deploy/warm_flower.py),
    so the SuperExec builds them before it forks (``warm``) and each message finds them in memory: rebuilding
    them cost ~0.6 s of CPU per message for an ML-100K-sized partner, five messages a round. Keyed by the
    files' names, sizes and modification times, so new data is read as soon as it lands.
    """
    return _partner_data(data_dir, _file_stamps(Path(data_dir)))


@functools.lru_cache(maxsize=2)
def _partner_data(data_dir: str, stamps: tuple[tuple[str, int, int], ...]) -> tuple[Dataset, Split]:
    dataset = load_dataset(data_dir)
    return dataset, leave_one_out(dataset)


def _file_stamps(directory: Path) -> tuple[tuple[str, int, int], ...]:
    if not directory.is_dir():
        return ()
    stamps = [(path.name, stat.st_size, stat.st_mtime_ns) for path in directory.iterdir()
              if path.is_file() for stat in [path.stat()]]
    return tuple(sorted(stamps))


def warm() -> None:
    """Called by deploy/warm_flower.py once in the partner's SuperExec, before any ClientApp is forked."""
    data_dir = os.environ.get(WARM_DATA_ENV)
    if data_dir:
        partner_data(data_dir)


def partner_state_dir(state_root: Path, config: RunConfig, run_id: int) -> Path:
    """A partner's state for one run: ``<state-dir>/runs/<run-dir's name, else run-<id>>``.

    A partner's volume outlives runs, but user embeddings belong to the model of one run, and the ledger
    numbers rounds per run (it refuses a round it already holds). Keyed by the run-dir, so resuming a run (a
    new Flower run id, the same ``run-dir``) finds the same embeddings and ledger.
    """
    return state_root / PARTNER_RUNS_DIR / (Path(config.run_dir).name if config.run_dir else f"run-{run_id}")


def secagg_when_requested(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Run Flower's ``secaggplus_mod`` on messages of the SecAgg+ protocol, pass the rest through.

    With ``secagg = false`` the server sends plain fit messages, which ``secaggplus_mod`` would reject.
    """
    if msg.has_content() and SECAGG_RECORD in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def build_client_app(config: RunConfig | None = None) -> ClientApp:
    """The ClientApp; ``config`` overrides ``context.run_config`` (the Python simulation API carries none)."""

    def configured_client_fn(context: Context) -> Client:
        return client_fn(context, config)

    return ClientApp(client_fn=configured_client_fn, mods=[secagg_when_requested])


app = build_client_app()
