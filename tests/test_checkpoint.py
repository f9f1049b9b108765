"""Specification of server/checkpoint.py and shared/atomic.py: resumable, never half-written or clobbered."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from server.checkpoint import KEEP, Checkpoint, CheckpointError, load_latest, save_checkpoint
from shared.atomic import write_atomic, write_json_atomic


def checkpoint(round_: int) -> Checkpoint:
    shared = [np.full((3, 2), float(round_), dtype=np.float32), np.arange(4, dtype=np.float32)]
    optimizer = {"velocity": [np.ones((3, 2), dtype=np.float32), np.zeros(4, dtype=np.float32)]}
    return Checkpoint(round_, shared, optimizer, {"history": [{"round": round_}], "optimizer_steps": round_})


def files(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run_dir / "checkpoints").iterdir())}


def test_no_checkpoint_means_a_fresh_run(tmp_path: Path) -> None:
    assert load_latest(tmp_path) is None


def test_save_then_load_round_trips_everything(tmp_path: Path) -> None:
    saved = checkpoint(3)
    path = save_checkpoint(tmp_path, saved)
    assert path == tmp_path / "checkpoints" / "round-0003.npz"
    loaded = load_latest(tmp_path)
    assert loaded is not None and loaded.round == 3
    for got, want in zip(loaded.shared, saved.shared, strict=True):
        np.testing.assert_array_equal(got, want)
    assert loaded.shared[0].dtype == np.float32
    np.testing.assert_array_equal(loaded.optimizer["velocity"][0], saved.optimizer["velocity"][0])
    assert loaded.meta == {"history": [{"round": 3}], "optimizer_steps": 3}


def test_only_the_last_two_checkpoints_are_kept(tmp_path: Path) -> None:
    for round_ in range(1, 6):
        save_checkpoint(tmp_path, checkpoint(round_))
    assert KEEP == 2
    assert sorted(files(tmp_path)) == ["round-0004.npz", "round-0005.npz"]
    latest = load_latest(tmp_path)
    assert latest is not None and latest.round == 5


def test_latest_is_by_round_number_not_by_name_length(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, checkpoint(9))
    save_checkpoint(tmp_path, checkpoint(10))
    latest = load_latest(tmp_path)
    assert latest is not None and latest.round == 10


def test_corrupt_newest_checkpoint_raises_naming_it_and_touches_nothing(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, checkpoint(1))
    newest = save_checkpoint(tmp_path, checkpoint(2))
    newest.write_bytes(newest.read_bytes()[:100])  # a torn write
    before = files(tmp_path)
    with pytest.raises(CheckpointError, match=r"round-0002\.npz: corrupt checkpoint"):
        load_latest(tmp_path)
    assert files(tmp_path) == before


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "model.npz"
    target.write_bytes(b"old contents")

    def fail_midway(fh) -> None:  # type: ignore[no-untyped-def]
        fh.write(b"half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, fail_midway)
    assert target.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]  # no temporary file left behind


def test_atomic_json_write_replaces_the_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "metrics.json"
    write_json_atomic(target, [{"round": 1}])
    write_json_atomic(target, [{"round": 1}, {"round": 2}])
    assert target.read_text() == '[\n  {\n    "round": 1\n  },\n  {\n    "round": 2\n  }\n]'
