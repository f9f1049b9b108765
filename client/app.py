"""The partner's Flower ``ClientApp``: thin wiring; the work lives in client/store.py and the trainers.

In simulation a node knows its store by ``partition-id`` (users are assigned by shared/partition.py); in a
deployment a partner's SuperNode points ``data-dir`` at its own CSV files and ``state-dir`` at its volume.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

from flwr.app import Context, Message
from flwr.client import Client, ClientApp
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable

from client.secagg_rounding import rounding_seed, seeded_global_numpy
from client.store import StoreClient, StoreData, store_data
from shared import secagg
from shared.config import RunConfig, from_mapping
from shared.workload import partner_workload

SECAGG_RECORD = "secaggplus_configs"
PARTNER_RUNS_DIR = "runs"
WARM_DATA_ENV = "FEDREC_WARM_DATA_DIR"  # set by deploy/partner.py for its SuperExec: the partner's data mount


def client_fn(context: Context, config: RunConfig | None = None) -> Client:
    config = config or from_mapping(dict(context.run_config))
    node = context.node_config
    store = node_store(context)
    if "data-dir" in node:  # a partner site: its own data, all of it
        workload, features = partner_workload(str(node["data-dir"]), config)
        data = StoreData(workload.split, workload.negatives, features, workload.dataset.item_ids)
    else:
        data = store_data(config, store)
    state_root = str(node.get("state-dir", "") or config.state_dir)
    state_dir = None
    if state_root:
        state_dir = (partner_state_dir(Path(state_root), config, context.run_id) if "data-dir" in node
                     else Path(state_root) / f"store-{store}")
    return StoreClient(config, store, data, state_dir).to_client()


def node_store(context: Context) -> int:
    """The store a node serves: its ``partition-id`` in simulation, its ``store`` (default 0) at a partner."""
    node = context.node_config
    return int(node.get("store", 0)) if "data-dir" in node else int(node["partition-id"])


def warm() -> None:
    """Called by deploy/warm_flower.py once in the partner's SuperExec, before any ClientApp is forked: the
    partner's data, split, evaluation candidates and catalog features (for the default run settings) are then
    in memory for every message (``partner_workload``)."""
    data_dir = os.environ.get(WARM_DATA_ENV)
    if data_dir:
        partner_workload(data_dir, from_mapping({}))


def partner_state_dir(state_root: Path, config: RunConfig, run_id: int) -> Path:
    """A partner's state for one run: ``<state-dir>/runs/<run-dir's name, else run-<id>>``.

    A partner's volume outlives runs, but user embeddings belong to the model of one run, and the ledger
    numbers rounds per run (it refuses a round it already holds). Keyed by the run-dir, so resuming a run (a
    new Flower run id, the same ``run-dir``) finds the same embeddings and ledger.
    """
    return state_root / PARTNER_RUNS_DIR / (Path(config.run_dir).name if config.run_dir else f"run-{run_id}")


def secagg_when_requested(msg: Message, context: Context, call_next: ClientAppCallable,
                          config: RunConfig | None = None) -> Message:
    """Run Flower's ``secaggplus_mod`` on messages of the SecAgg+ protocol, pass the rest through.

    With ``secagg = false`` the server sends plain fit messages, which ``secaggplus_mod`` would reject. Its
    stochastic rounding is drawn from the run's seed (client/secagg_rounding.py), so runs reproduce.
    ``config`` overrides ``context.run_config`` as in ``client_fn``.
    """
    if not (msg.has_content() and SECAGG_RECORD in msg.content.config_records):
        return call_next(msg, context)
    config = config or from_mapping(dict(context.run_config))
    secagg.install()  # fedrec's Shamir sharing and full-strength masks inside Flower's SecAgg+
    seed = rounding_seed(config, node_store(context), int(msg.metadata.group_id))
    with seeded_global_numpy(seed):
        return secaggplus_mod(msg, context, call_next)


class FedrecClientApp(ClientApp):
    """fedrec's ClientApp, pickled as the recipe that builds it: ``build_client_app(config)``.

    Why: the Simulation Engine pickles the ClientApp with every message it hands a Ray actor. Flower's
    ClientApp holds closures, which cloudpickle serializes by value, scanning ``sys.modules`` for each one:
    ~1.7 ms of the driver's CPU per message (profiled), i.e. ~0.4 s per 50-store SecAgg+ round of five
    exchanges, on the same thread that feeds both actors. Rebuilding the app from its config in the actor
    takes microseconds and gives the same app.
    """

    def __init__(self, config: RunConfig | None = None) -> None:
        self.config = config

        def configured_client_fn(context: Context) -> Client:
            return client_fn(context, config)

        super().__init__(client_fn=configured_client_fn, mods=[partial(secagg_when_requested, config=config)])

    def __reduce__(self) -> tuple[Callable[[RunConfig | None], ClientApp], tuple[RunConfig | None]]:
        return build_client_app, (self.config,)


def build_client_app(config: RunConfig | None = None) -> ClientApp:
    """The ClientApp; ``config`` overrides ``context.run_config`` (the Python simulation API carries none)."""
    return FedrecClientApp(config)


app = build_client_app()
