"""The partner's durable logs: clicks recorded by the service (and items it added), one JSON object a line.

Durability: every record is one ``os.write`` of a whole line to a file opened with ``O_APPEND``, followed by
``fsync`` before the call returns, under a thread lock plus an ``flock`` (two processes — the service and a
store's training round — may open the same file). A crash can therefore only leave a *torn last line*; opening
the log drops such a tail with a warning (it was never acknowledged to the caller), so the next record starts
on a fresh line and no earlier record is ever lost.

The store's next federated round reads the click log (``logged_positives``) and trains on the clicks as extra
positives; the evaluation split (each user's validation and test item) is left untouched. This module imports
nothing heavy: the training code uses it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.split import Split

INTERACTIONS_FILE = "interactions.jsonl"
ADDED_ITEMS_FILE = "added_items.jsonl"
NEWLINE = b"\n"

log = logging.getLogger(__name__)


class JsonLinesLog:
    """An append-only JSON-lines file, safe against crashes and concurrent writers."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_torn_tail()

    def _drop_torn_tail(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "r+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            data = handle.read()
            if data and not data.endswith(NEWLINE):
                keep = data.rfind(NEWLINE) + 1
                log.warning("%s: dropped a torn last record (%d bytes, never acknowledged)", self.path,
                            len(data) - keep)
                handle.truncate(keep)
                os.fsync(handle.fileno())

    def append(self, record: dict[str, Any]) -> None:
        """Write one record and fsync it; returns only once it is on disk."""
        line = json.dumps(record, ensure_ascii=False, sort_keys=True).encode() + NEWLINE
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                written = os.write(fd, line)
                if written != len(line):
                    raise OSError(f"{self.path}: short write ({written} of {len(line)} bytes)")
                os.fsync(fd)
            finally:
                os.close(fd)

    def records(self) -> list[dict[str, Any]]:
        return list(read_records(self.path))


def read_records(path: str | Path) -> Iterator[dict[str, Any]]:
    """Every complete record of a log; a torn last line is skipped with a warning, a missing file is empty."""
    path = Path(path)
    if not path.exists():
        return
    data = path.read_bytes()
    lines = data.split(NEWLINE)
    torn = lines.pop()  # b"" when the file ends with a newline
    if torn:
        log.warning("%s: ignoring a torn last record (%d bytes)", path, len(torn))
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError:
            log.warning("%s:%d: skipping an unreadable record", path, number)
            continue
        if isinstance(record, dict):
            yield record


@dataclass(frozen=True)
class Interaction:
    user_id: str
    item_id: str
    timestamp: int

    def to_record(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "item_id": self.item_id, "timestamp": self.timestamp}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Interaction | None:
        try:
            return cls(str(record["user_id"]), str(record["item_id"]), int(record["timestamp"]))
        except (KeyError, TypeError, ValueError):
            return None


def read_interactions(state_dir: str | Path) -> list[Interaction]:
    """The clicks logged in a store's state directory, in the order they were recorded."""
    parsed = (Interaction.from_record(r) for r in read_records(Path(state_dir) / INTERACTIONS_FILE))
    return [i for i in parsed if i is not None]


def logged_positives(user_ids: Sequence[str], item_ids: Sequence[str], valid_items: np.ndarray,
                     test_items: np.ndarray, train_of: Sequence[np.ndarray],
                     interactions: Sequence[Interaction]) -> list[np.ndarray]:
    """Per user (in ``user_ids`` order), the logged clicks to add to its training positives.

    Kept out: clicks of users this store does not train, items outside the federated catalog (added by
    ``AddItem``: the shared model has no row for them), items already among the user's training positives,
    and the user's validation/test item — evaluation must stay exactly the protocol's.
    """
    user_row = {user: row for row, user in enumerate(user_ids)}
    item_index = {item: index for index, item in enumerate(item_ids)}
    extra: list[list[int]] = [[] for _ in user_ids]
    for interaction in interactions:
        row = user_row.get(interaction.user_id)
        item = item_index.get(interaction.item_id)
        if row is None or item is None:
            continue
        if item in (valid_items[row], test_items[row]) or item in extra[row]:
            continue
        if np.any(train_of[row] == item):
            continue
        extra[row].append(item)
    return [np.asarray(items, dtype=np.int64) for items in extra]


def with_logged_clicks(split: Split, item_ids: Sequence[str], state_dir: str | Path) -> Split:
    """``split`` with the store's logged clicks appended to each user's training positives (newest last)."""
    interactions = read_interactions(state_dir)
    if not interactions or not item_ids:
        return split
    train_of = [split.user_train_items(u) for u in range(split.n_users)]
    extra = logged_positives(split.user_ids, item_ids, split.valid_items, split.test_items, train_of,
                             interactions)
    if not any(len(e) for e in extra):
        return split
    per_user = [np.concatenate([train, more]) for train, more in zip(train_of, extra, strict=True)]
    counts = np.array([len(items) for items in per_user], dtype=np.int64)
    return Split(user_ids=split.user_ids, n_items=split.n_items,
                 train_users=np.repeat(np.arange(split.n_users, dtype=np.int64), counts),
                 train_items=np.concatenate(per_user) if per_user else np.zeros(0, np.int64),
                 train_indptr=np.concatenate(([0], np.cumsum(counts))).astype(np.int64),
                 valid_items=split.valid_items, test_items=split.test_items)
