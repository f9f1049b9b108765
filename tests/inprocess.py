"""Run the real ServerApp workflow against the real ClientApp in this process, without Ray.

``InProcessGrid`` is a Flower ``Grid`` whose nodes are ClientApp calls in the test's own process: every
message the workflow sends (plain FedAvg fit/evaluate, or each SecAgg+ stage) goes through the ClientApp with
its mods, as the Simulation Engine would hand it to a Ray actor, and a ClientApp exception comes back as an
error reply the way the engine reports it. Node ``i`` is store ``i`` (``partition-id``) with its own
persistent ``context.state``. This makes whole-run specifications (ledger.json, budget stop, what leaves a
store) fast.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterable
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.client import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp.grid import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from server.app import run_server
from shared.config import RunConfig

RUN_ID = 4242
NODE_ID_BASE = 1_000  # node ids distinct from partition ids, as on a real SuperLink
CLIENT_APP_RAISED_EXCEPTION = 2  # flwr.common.constant.ErrorCode.CLIENT_APP_RAISED_EXCEPTION


class InProcessGrid(Grid):
    def __init__(self, client_app: ClientApp, num_nodes: int) -> None:
        self.client_app = client_app
        self._run = Run.create_empty(RUN_ID)
        self.contexts = {
            NODE_ID_BASE + i: Context(run_id=RUN_ID, node_id=NODE_ID_BASE + i,
                                      node_config={"partition-id": i, "num-partitions": num_nodes},
                                      state=RecordDict(), run_config={})
            for i in range(num_nodes)
        }
        self.replies: list[Message] = []  # a copy of every reply a node sent, in order

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("the legacy workflows only use send_and_receive")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("the legacy workflows only use send_and_receive")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> Iterable[Message]:
        replies = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            context = self.contexts[message.metadata.dst_node_id]
            try:  # a node gets its own copy, as if deserialized (SecAgg+ stages share one content object)
                reply = copy.deepcopy(self.client_app(copy.deepcopy(message), context))
            except Exception as exc:  # the engine turns a ClientApp exception into an error reply
                reply = Message(Error(CLIENT_APP_RAISED_EXCEPTION, f"{type(exc).__name__}: {exc}"),
                                reply_to=message)
            reply.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            replies.append(reply)
            self.replies.append(copy.deepcopy(reply))  # as sent: the workflow pops the arrays it reads
        return replies


def run_in_process(config: RunConfig, client_app: ClientApp, num_nodes: int) -> tuple[dict[str, Any],
                                                                                   InProcessGrid]:
    """``run_server`` (the ServerApp's body) on an in-process grid; returns (summary, grid)."""
    grid = InProcessGrid(client_app, num_nodes)
    server_context = Context(run_id=RUN_ID, node_id=0, node_config={}, state=RecordDict(), run_config={})
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    # Messages take their run id from the process's task identity, which the engine sets for a ServerApp.
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, RUN_ID, SUPERLINK_NODE_ID
    try:
        return run_server(grid, server_context, config), grid
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved
