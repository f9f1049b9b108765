"""How fedrec's apps sit in Flower's Simulation Engine: what a message costs beyond the store's own work."""

from __future__ import annotations

import pickle

from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid import InMemoryGrid

from client.app import FedrecClientApp, build_client_app
from server.app import SIMULATION_PULL_SECONDS, poll_replies_sooner
from shared.config import from_mapping


def test_the_client_app_travels_as_its_config_not_as_pickled_closures() -> None:
    # The engine pickles the ClientApp with every message; plain pickle refuses closures, so this passing
    # means none is serialized by value.
    config = from_mapping({"num-stores": 7, "secagg": True})
    payload = pickle.dumps(build_client_app(config))
    app = pickle.loads(payload)
    assert isinstance(app, FedrecClientApp) and app.config == config
    assert len(payload) < 4096
    # flwr run's app, whose config comes from the context
    assert pickle.loads(pickle.dumps(build_client_app())).config is None


def test_the_server_polls_the_in_memory_grid_sooner_and_leaves_other_grids_alone() -> None:
    # built as flwr.simulation.run_simulation builds it
    grid = InMemoryGrid(state_factory=LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(),
                                                       ObjectStoreFactory()))
    assert grid.pull_interval > SIMULATION_PULL_SECONDS
    poll_replies_sooner(grid)
    assert grid.pull_interval == SIMULATION_PULL_SECONDS

    class OtherGrid:
        pull_interval = 3.0

    other = OtherGrid()
    poll_replies_sooner(other)  # type: ignore[arg-type]
    assert other.pull_interval == 3.0
