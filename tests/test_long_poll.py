"""deploy/long_poll.py: empty pulls are held until the server's state changes, and only then."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "deploy"))
import long_poll  # noqa: E402

WAIT = 0.6  # seconds a test lets a pull be held
QUICK = 0.25  # an answer this soon was not held for the whole wait


def answer(messages: list[str]) -> SimpleNamespace:
    return SimpleNamespace(messages_list=list(messages))


class Inbox:
    """A stand-in for a server's state and its pull handler: the handler answers what has been stored."""

    def __init__(self) -> None:
        self.stored: list[str] = []
        self.calls = 0

    def pull(self) -> SimpleNamespace:
        self.calls += 1
        found, self.stored = self.stored, []
        return answer(found)


def held(inbox: Inbox, changes: long_poll.StateChanges, slots: int = 2) -> Any:
    return long_poll.held_when_empty(inbox.pull, long_poll._no_messages, changes, WAIT,
                                     threading.BoundedSemaphore(slots))


def timed(pull: Any) -> tuple[SimpleNamespace, float]:
    started = time.monotonic()
    return pull(), time.monotonic() - started


def store_later(inbox: Inbox, changes: long_poll.StateChanges, message: str,
                after: float) -> threading.Thread:
    def store() -> None:
        time.sleep(after)
        inbox.stored.append(message)
        changes.notify()

    thread = threading.Thread(target=store)
    thread.start()
    return thread


def test_an_empty_pull_is_answered_as_soon_as_a_message_is_stored() -> None:
    inbox, changes = Inbox(), long_poll.StateChanges()
    writer = store_later(inbox, changes, "m1", after=0.1)
    response, seconds = timed(held(inbox, changes))
    writer.join()
    assert response.messages_list == ["m1"]
    assert 0.05 < seconds < QUICK


def test_an_empty_pull_with_nothing_stored_returns_empty_after_the_wait() -> None:
    inbox, changes = Inbox(), long_poll.StateChanges()
    response, seconds = timed(held(inbox, changes))
    assert response.messages_list == []
    assert WAIT - 0.05 < seconds < WAIT + 0.5


def test_a_pull_that_finds_messages_is_not_held() -> None:
    inbox, changes = Inbox(), long_poll.StateChanges()
    inbox.stored.append("m1")
    response, seconds = timed(held(inbox, changes))
    assert response.messages_list == ["m1"] and inbox.calls == 1 and seconds < QUICK


def test_a_change_that_lands_between_looking_and_waiting_is_not_missed() -> None:
    inbox, changes = Inbox(), long_poll.StateChanges()

    def pull_then_store() -> SimpleNamespace:  # the message arrives right after the handler found nothing
        found = inbox.pull()
        if inbox.calls == 1:
            inbox.stored.append("m1")
            changes.notify()
        return found

    pull = long_poll.held_when_empty(pull_then_store, long_poll._no_messages, changes, WAIT,
                                     threading.BoundedSemaphore(1))
    response, seconds = timed(pull)
    assert response.messages_list == ["m1"] and seconds < QUICK


def test_past_its_slots_a_pull_is_answered_at_once() -> None:
    inbox, changes = Inbox(), long_poll.StateChanges()
    pull = held(inbox, changes, slots=1)
    first = threading.Thread(target=pull)
    first.start()
    time.sleep(0.1)  # the first pull holds the only slot
    response, seconds = timed(pull)
    first.join()
    assert response.messages_list == [] and seconds < QUICK


def test_a_changes_aware_sleep_wakes_on_a_change_and_is_capped_otherwise() -> None:
    changes = long_poll.StateChanges()
    sleep = long_poll.changes_or_timeout(changes, cap=WAIT)
    started = time.monotonic()
    sleep(3.0)
    assert WAIT - 0.05 < time.monotonic() - started < WAIT + 0.5
    waker = threading.Timer(0.1, changes.notify)
    waker.start()
    started = time.monotonic()
    sleep(3.0)
    waker.join()
    assert time.monotonic() - started < QUICK


@pytest.mark.parametrize("server", [long_poll.SUPERLINK, long_poll.SUPERNODE], ids=["superlink", "supernode"])
def test_install_wraps_flowers_pull_handlers_and_state_methods(server: dict[str, Any],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower's handlers and state classes are found where the module expects them (flwr 1.41), wrapped, and a
    store through the state wakes a held pull. Everything is restored after the test."""
    import importlib

    monkeypatch.setenv(long_poll.WAIT_ENV, str(WAIT))
    stores: list[str] = []
    for module_name, class_name, method_name, _ in server["notify_after"]:
        cls = getattr(importlib.import_module(module_name), class_name)
        assert callable(getattr(cls, method_name)), f"{class_name}.{method_name} is not in this Flower"
        monkeypatch.setattr(cls, method_name, lambda *_a, _n=method_name, **_k: stores.append(_n))
    inbox = Inbox()
    for module_name, function_name, _, _ in server["handlers"]:
        module = importlib.import_module(module_name)
        assert callable(getattr(module, function_name)), f"{module_name}.{function_name} is not in Flower"
        monkeypatch.setattr(module, function_name, lambda *_a, **_k: inbox.pull())
    channels = long_poll.install(server)
    assert channels is not None and set(channels) == {channel for *_, channel in server["notify_after"]}
    for module_name, class_name, method_name, channel in server["notify_after"]:  # each wakes its channel
        before = {name: changes.count() for name, changes in channels.items()}
        getattr(getattr(importlib.import_module(module_name), class_name), method_name)(object())
        assert stores[-1] == method_name
        assert {name: changes.count() - before[name] for name, changes in channels.items()} == {
            name: int(name == channel) for name in channels}
    with pytest.raises(RuntimeError, match="already installed"):
        long_poll.install(server)
    handler_module, handler_name, is_empty, channel = server["handlers"][0]
    if is_empty is long_poll._no_messages:
        writer = store_later(inbox, channels[channel], "m1", after=0.1)
        response, seconds = timed(getattr(importlib.import_module(handler_module), handler_name))
        writer.join()
        assert response.messages_list == ["m1"] and seconds < QUICK


def test_an_object_pull_is_held_only_while_the_object_is_known_but_not_pushed() -> None:
    pending = SimpleNamespace(object_found=True, object_available=False, object_content=b"")
    pushed = SimpleNamespace(object_found=True, object_available=True, object_content=b"x")
    unknown = SimpleNamespace(object_found=False, object_available=False, object_content=b"")
    assert long_poll._object_not_pushed_yet(pending)
    assert not long_poll._object_not_pushed_yet(pushed) and not long_poll._object_not_pushed_yet(unknown)
    changes, answers = long_poll.StateChanges(), [pending]
    pull = long_poll.held_when_empty(lambda: answers[-1], long_poll._object_not_pushed_yet, changes, WAIT,
                                     threading.BoundedSemaphore(1))

    def push() -> None:
        answers.append(pushed)
        changes.notify()

    pusher = threading.Timer(0.1, push)
    pusher.start()
    response, seconds = timed(pull)
    pusher.join()
    assert response is pushed and seconds < QUICK
    answers[:] = [unknown]  # an object nobody announced is answered at once, as Flower answers it
    response, seconds = timed(pull)
    assert response is unknown and seconds < QUICK


def test_a_wait_of_zero_installs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(long_poll.WAIT_ENV, "0")
    assert long_poll.install(long_poll.SUPERLINK) is None


@pytest.mark.parametrize(("name", "value", "message"), [
    (long_poll.WAIT_ENV, "30", "must be in"), (long_poll.WAIT_ENV, "-1", "must be in"),
    (long_poll.SLOTS_ENV, "0", "at least 1")])
def test_bad_settings_name_the_variable(name: str, value: str, message: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"{name}.*{message}"):
        long_poll.settings()
