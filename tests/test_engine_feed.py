"""Specification of simulations/engine_feed.py: the Simulation Engine's feeder, on Flower's own link state."""

from __future__ import annotations

import contextlib
import importlib
import threading
import time
from collections.abc import Iterator
from queue import Empty, Queue
from typing import Any

import pytest
from flwr.app import Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.proto.task_pb2 import Task
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager

from simulations import engine_feed

vce_api = importlib.import_module(engine_feed.VCE_MODULE)
RUN_ID = 4242


@pytest.fixture(autouse=True)
def _serverapp_identity() -> Iterator[None]:
    """Messages take their run and source from the process's task identity, as in a ServerApp."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, RUN_ID, SUPERLINK_NODE_ID
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def _state_with_run(num_nodes: int) -> tuple[Any, int, list[int]]:
    """The in-memory link state with one run and ``num_nodes`` nodes, as ``run_simulation`` and the engine
    prepare it; returns (state, run id, node ids)."""
    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    state = factory.state()
    run = Run.create_empty(run_id=RUN_ID)
    run.primary_task_id, run.federation_id = 1, NOOP_FEDERATION_ID
    state.run_ids[run.run_id] = RunRecord(run=run)
    state.task_store[run.primary_task_id] = Task(task_id=run.primary_task_id, run_id=run.run_id)
    return state, run.run_id, list(vce_api._register_nodes(num_nodes, factory))


def _message(run_id: int, node_id: int, ttl: float = 60.0) -> Message:
    message = Message(RecordDict(), dst_node_id=node_id, message_type="train", ttl=ttl)
    assert message.metadata.run_id == run_id
    message.metadata.__dict__["_message_id"] = message.object_id  # as the grid assigns it when pushing
    return message


def _drain(queue: Queue[Message], wait: float) -> list[Message]:
    got, deadline = [], time.monotonic() + wait
    while time.monotonic() < deadline:
        with contextlib.suppress(Empty):
            got.append(queue.get(timeout=0.01))
    return got


def test_each_message_reaches_the_engine_once_and_soon() -> None:
    state, run_id, (a, b, other) = _state_with_run(3)
    queue: Queue[Message] = Queue()
    stop = threading.Event()
    feeder = threading.Thread(target=engine_feed.feed_messages, args=(state, queue, {a: 0, b: 1}, stop))
    feeder.start()
    try:
        assert state.store_message_ins(_message(run_id, other)) is not None  # not a node of this engine
        # five exchanges one after another, as a SecAgg+ round's stages: each waits for the last reply
        started, got = time.monotonic(), []
        for _ in range(5):
            for node in (a, b):
                assert state.store_message_ins(_message(run_id, node)) is not None
            got += [queue.get(timeout=2.0), queue.get(timeout=2.0)]
        five_exchanges = time.monotonic() - started
        got += _drain(queue, 0.2)
    finally:
        stop.set()
        feeder.join()
    assert sorted(m.metadata.dst_node_id for m in got) == sorted([a, b] * 5)
    assert len({m.metadata.message_id for m in got}) == 10
    assert all(m.metadata.delivered_at for m in got)  # marked delivered by Flower's get_message_ins
    assert five_exchanges < 0.25  # Flower's feeder, which sleeps 0.1 s between scans, needs ~0.5 s
    assert engine_feed.nodes_with_undelivered_messages(state, {a, b, other}) == {other}


def test_an_expired_message_is_not_delivered() -> None:
    state, run_id, (node,) = _state_with_run(1)
    expired = _message(run_id, node, ttl=0.05)
    assert state.store_message_ins(expired) is not None
    time.sleep(0.1)
    queue: Queue[Message] = Queue()
    stop = threading.Event()
    feeder = threading.Thread(target=engine_feed.feed_messages, args=(state, queue, {node: 0}, stop))
    feeder.start()
    got = _drain(queue, 0.1)
    stop.set()
    feeder.join()
    assert got == []


def test_install_replaces_flowers_feeder_once_and_fails_loudly_on_another_layout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vce_api, engine_feed.FEEDER, vce_api.put_message_into_state)  # any Flower function
    engine_feed.install()
    assert getattr(vce_api, engine_feed.FEEDER) is engine_feed.feed_messages
    engine_feed.install()
    assert getattr(vce_api, engine_feed.FEEDER) is engine_feed.feed_messages
    monkeypatch.delattr(vce_api, engine_feed.FEEDER)
    with pytest.raises(RuntimeError, match="add_messages_to_queue is missing"):
        engine_feed.install()


def test_a_link_state_without_the_expected_fields_gets_flowers_feeder_and_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    # Another flwr version: slower but working, never a feeder thread that dies and leaves the run hanging.
    calls = []

    def flowers(*args: object) -> None:
        calls.append(args)

    with caplog.at_level("WARNING", logger="fedrec.simulation"):
        engine_feed.feed_messages(object(), Queue(), {1: 0}, threading.Event(), flowers_feeder=flowers)
    assert len(calls) == 1
    assert "message_ins_store" in caplog.text and "Flower's own message feeder" in caplog.text


def test_flowers_own_feeder_is_the_one_kept_for_that_fallback() -> None:
    assert engine_feed.FLOWERS_FEEDER is not engine_feed.feed_messages
    assert engine_feed.FLOWERS_FEEDER.__module__ == engine_feed.VCE_MODULE
