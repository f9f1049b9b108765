"""Feed Flower's Simulation Engine its messages with one cheap scan every 10 ms, not 50 scans every 100 ms.

Why: in flwr 1.41 the engine's feeder thread (``vce_api.add_messages_to_queue``) asks the in-memory link
state for each node's next message in turn, every 0.1 s, and each ask walks *every* stored message, checking
its TTL and federation on the way (``InMemoryLinkState.get_message_ins``). At 50 stores that was 0.35 ms a
call, 500 calls a second: a sixth of a core, holding the lock and the GIL of the process whose threads hand
each message to a Ray actor; and every exchange of a round first waited up to 0.1 s to be noticed. A SecAgg+
round is five exchanges, a plain one two (profiled in session 10, docs/results.md "Speed").

``install()`` replaces the feeder with one that finds the nodes that have an undelivered message in one pass
over the store, then delivers through Flower's own ``get_message_ins`` for those nodes only, one message per
node per pass as Flower does (so TTL and federation checks, and the delivered mark, stay Flower's). It
touches the simulation only: a deployment's SuperLink never runs this code. ``install()`` fails loudly if
Flower no longer has the feeder; a link state without the fields read here (another flwr version) gets
Flower's own feeder back, with a warning that names them: slower, never a run that hangs on a dead thread.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable, Mapping
from queue import Queue
from typing import Any

from shared.flower_patch import rebind

VCE_MODULE = "flwr.server.superlink.fleet.vce.vce_api"
FEEDER = "add_messages_to_queue"
FEED_INTERVAL_SECONDS = 0.01  # Flower: 0.1 s
STATE_ATTRIBUTES = ("lock", "message_ins_store", "get_message_ins")  # of InMemoryLinkState, used below
FLOWERS_FEEDER = importlib.import_module(VCE_MODULE).add_messages_to_queue  # kept before install() rebinds it
log = logging.getLogger("fedrec.simulation")


def nodes_with_undelivered_messages(state: Any, nodes: set[int]) -> set[int]:
    """The nodes among ``nodes`` that have a message not yet handed to the engine: one pass over the store."""
    with state.lock:
        return {message.metadata.dst_node_id for message in state.message_ins_store.values()
                if message.metadata.delivered_at == "" and message.metadata.dst_node_id in nodes}


def feed_messages(state: Any, queue: Queue[Any], nodes_mapping: Mapping[int, int],
                  f_stop: threading.Event, flowers_feeder: Callable[..., None] = FLOWERS_FEEDER) -> None:
    """The engine's feeder thread (same signature and contract as Flower's ``add_messages_to_queue``)."""
    missing = [name for name in STATE_ATTRIBUTES if not hasattr(state, name)]
    if missing:
        log.warning("%s lacks %s (a flwr version other than 1.41): the Simulation Engine keeps Flower's own "
                    "message feeder, without simulations/engine_feed.py's speed-up",
                    type(state).__name__, missing)
        flowers_feeder(state, queue, nodes_mapping, f_stop)
        return
    nodes = set(nodes_mapping)
    while not f_stop.is_set():
        for node_id in nodes_with_undelivered_messages(state, nodes):
            for message in state.get_message_ins(node_id=node_id, limit=1):
                queue.put(message)
        f_stop.wait(FEED_INTERVAL_SECONDS)


def install() -> None:
    """Make the Simulation Engine start ``feed_messages`` as its feeder (idempotent)."""
    rebind(VCE_MODULE, FEEDER, feed_messages, "simulations/engine_feed.py")
