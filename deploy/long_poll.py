"""Long polling for Flower's SuperLink and SuperNode (flwr 1.41): an empty pull waits for work to arrive.

Why: flwr 1.41's components find their work by polling. Each SuperNode asks the SuperLink for its next message
(Fleet ``pull-messages``), the ServerApp asks it for replies (Runtime ``pull-messages``), and each partner's
SuperExec asks its SuperNode for a task to run (``acquire-task``), each an HTTPS request that both ends pay
for in CPU (FastAPI, TLS, node authentication). With short polls (``warm_flower.py``'s
``FEDREC_POLL_SECONDS``) most requests find nothing, and every hop of an exchange still waits half a poll on
average; with long ones, every hop waits longer (docs/results.md, "Deployment round").

Here an empty pull (no message, no task, or an object announced but not pushed yet) is held, up to
``FEDREC_LONG_POLL_SECONDS``, and answered as soon as the server's state stores something it could deliver:
the same Flower handler is simply called again. Requests, responses,
handlers and state are Flower's, unchanged. Held requests occupy worker threads of the server's thread pool
(anyio's 40), so at most ``FEDREC_LONG_POLL_SLOTS`` are held at a time; past that a pull is answered at once,
as without this module. The wait stays well below Flower's 30 s HTTP read timeout.

The SuperNode's own waits (for its ClientApp's reply and its objects) wake on the same state changes instead
of sleeping a whole poll (``changes_or_timeout``).
"""

from __future__ import annotations

import functools
import importlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any

WAIT_ENV = "FEDREC_LONG_POLL_SECONDS"
SLOTS_ENV = "FEDREC_LONG_POLL_SLOTS"
DEFAULT_WAIT_SECONDS = 2.0
MAX_WAIT_SECONDS = 10.0  # Flower's HTTP clients give up on a read after 30 s
DEFAULT_SLOTS = 20  # half of anyio's worker threads, so other requests always find one
PATCHED = "__fedrec_long_poll__"


def _no_messages(response: Any) -> bool:
    return not len(response.messages_list)


def _no_task(response: Any) -> bool:
    return not response.HasField("task")


def _object_not_pushed_yet(response: Any) -> bool:
    """An object of a stored message whose content has not arrived: its sender pushes objects one by one after
    the message, and a receiver woken by the message asks for them at once (Flower would retry after 1, 2, 4 s
    and more, or ``warm_flower.py``'s capped backoff)."""
    return bool(response.object_found) and not response.object_available


# Per server: the state methods after which a held pull may find something, with the channel they notify,
# and the pull handlers, with how each tells an empty answer and the channel it waits on. Handlers are rebound
# in their module: Flower's routers look them up there on every request (``fleet_handlers.pull_messages``;
# ``app.state.runtime_handlers`` is the module). Two channels at the SuperLink, so that the many object stores
# of a round do not wake every pull for messages (each wake is a state query: SQL with ``--database``).
LINKSTATES = (("flwr.server.superlink.linkstate.in_memory_linkstate", "InMemoryLinkState"),
              ("flwr.server.superlink.linkstate.sql_linkstate", "SqlLinkState"))
OBJECT_STORES = (("flwr.supercore.object_store.in_memory_object_store", "InMemoryObjectStore"),
                 ("flwr.supercore.object_store.sql_object_store", "SqlObjectStore"))
SUPERLINK = {
    # The Fleet and Runtime push handlers store every message and reply through the first method, every
    # object through the second; the SQL state has committed when they return.
    "notify_after": [*((module, cls, "store_message_and_object_tree", "messages")
                       for module, cls in LINKSTATES),
                     *((module, cls, "store_object", "objects") for module, cls in LINKSTATES)],
    "handlers": [("flwr.superlink.servicer.fleet.fleet_handlers", "pull_messages", _no_messages,
                  "messages"),
                 ("flwr.superlink.servicer.runtime.runtime_handlers", "pull_messages", _no_messages,
                  "messages"),
                 ("flwr.superlink.servicer.fleet.fleet_handlers", "pull_object", _object_not_pushed_yet,
                  "objects"),
                 ("flwr.superlink.servicer.runtime.runtime_handlers", "pull_object", _object_not_pushed_yet,
                  "objects")],
}
SUPERNODE = {
    # A pulled message becomes a task before its objects arrive from the SuperLink (all at once, when the
    # last is in); a ClientApp's reply is stored, then its objects one by one. Every object lands through
    # the node's object store.
    "notify_after": [*(("flwr.supernode.nodestate.in_memory_nodestate", "InMemoryNodeState", method, "node")
                       for method in ("create_task", "store_message_and_object_tree")),
                     *((module, cls, "put", "node") for module, cls in OBJECT_STORES)],
    "handlers": [("flwr.supernode.servicer.runtime.runtime_handlers", "acquire_task", _no_task, "node"),
                 ("flwr.supernode.servicer.runtime.runtime_handlers", "pull_object", _object_not_pushed_yet,
                  "node")],
}


class StateChanges:
    """A count of state changes that waits can block on. A waiter passes the count it saw before looking, so
    a change between looking and waiting is never missed."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._count = 0

    def count(self) -> int:
        with self._condition:
            return self._count

    def notify(self) -> None:
        with self._condition:
            self._count += 1
            self._condition.notify_all()

    def wait_past(self, seen: int, timeout: float) -> None:
        """Return once the count differs from ``seen``, or after ``timeout`` seconds."""
        with self._condition:
            self._condition.wait_for(lambda: self._count != seen, timeout)


def settings() -> tuple[float, int]:
    """(wait, slots) from the environment; a wait of 0 turns long polling off."""
    wait = float(os.environ.get(WAIT_ENV, DEFAULT_WAIT_SECONDS))
    slots = int(os.environ.get(SLOTS_ENV, DEFAULT_SLOTS))
    if not 0.0 <= wait <= MAX_WAIT_SECONDS:
        raise ValueError(f"{WAIT_ENV}: {wait} must be in [0, {MAX_WAIT_SECONDS}] seconds (0 turns it off)")
    if slots < 1:
        raise ValueError(f"{SLOTS_ENV}: {slots} must be at least 1")
    return wait, slots


def held_when_empty(handler: Callable[..., Any], is_empty: Callable[[Any], bool], changes: StateChanges,
                    wait: float, slots: threading.BoundedSemaphore) -> Callable[..., Any]:
    """``handler``, whose empty answer is retried after each state change for up to ``wait`` seconds."""

    @functools.wraps(handler)
    def pull(*args: Any, **kwargs: Any) -> Any:
        seen = changes.count()
        response = handler(*args, **kwargs)
        if not is_empty(response) or not slots.acquire(blocking=False):
            return response
        try:
            deadline = time.monotonic() + wait
            while is_empty(response) and (remaining := deadline - time.monotonic()) > 0:
                changes.wait_past(seen, remaining)
                seen = changes.count()
                response = handler(*args, **kwargs)
        finally:
            slots.release()
        return response

    setattr(pull, PATCHED, True)
    return pull


def notifying(method: Callable[..., Any], changes: StateChanges) -> Callable[..., Any]:
    """``method``, followed by a notification of ``changes``."""

    @functools.wraps(method)
    def changed(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        finally:
            changes.notify()

    setattr(changed, PATCHED, True)
    return changed


def changes_or_timeout(changes: StateChanges, cap: float) -> Callable[[float], None]:
    """A ``time.sleep`` for polling loops: back at the next state change, or after ``min(seconds, cap)``."""

    def sleep(seconds: float) -> None:
        changes.wait_past(changes.count(), min(seconds, cap))

    return sleep


def install(server: dict[str, Any]) -> dict[str, StateChanges] | None:
    """Hold empty pulls of ``server`` (``SUPERLINK`` or ``SUPERNODE``) in this process; returns its channels,
    None when long polling is off."""
    wait, slot_count = settings()
    if wait == 0:
        return None
    channels = {channel: StateChanges() for *_, channel in server["notify_after"]}
    slots = threading.BoundedSemaphore(slot_count)
    for module_name, class_name, method_name, channel in server["notify_after"]:
        cls = getattr(importlib.import_module(module_name), class_name)
        method = getattr(cls, method_name)
        if getattr(method, PATCHED, False):
            raise RuntimeError(f"long polling is already installed on {class_name}.{method_name}")
        setattr(cls, method_name, notifying(method, channels[channel]))
    for module_name, function_name, is_empty, channel in server["handlers"]:
        module = importlib.import_module(module_name)
        handler = getattr(module, function_name)
        setattr(module, function_name, held_when_empty(handler, is_empty, channels[channel], wait, slots))
    return channels
