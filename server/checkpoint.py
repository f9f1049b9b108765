"""Round checkpoints of the global model: written atomically after every round, resumed on restart.

A checkpoint holds the shared parameters, the server optimizer's state, the federation ledger and the round
history. Files are per round (the last ``KEEP`` are kept), so a corrupt newest file never costs the previous
one: loading a corrupt checkpoint is reported and nothing on disk is touched.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared.atomic import write_atomic

KEEP = 2
PATTERN = re.compile(r"round-(\d+)\.npz$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read; the message names the file."""


@dataclass
class Checkpoint:
    round: int
    shared: list[np.ndarray]
    optimizer: dict[str, list[np.ndarray]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def save_checkpoint(run_dir: Path, checkpoint: Checkpoint) -> Path:
    arrays: dict[str, np.ndarray] = {f"shared_{i}": a for i, a in enumerate(checkpoint.shared)}
    for slot, values in checkpoint.optimizer.items():
        arrays.update({f"opt_{slot}_{i}": a for i, a in enumerate(values)})
    meta = {"round": checkpoint.round, "n_shared": len(checkpoint.shared),
            "optimizer_slots": sorted(checkpoint.optimizer), **checkpoint.meta}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)
    path = checkpoint_dir(run_dir) / f"round-{checkpoint.round:04d}.npz"
    write_atomic(path, lambda fh: fh.write(buffer.getvalue()))
    for old in sorted(_rounds(run_dir))[:-KEEP]:
        (checkpoint_dir(run_dir) / f"round-{old:04d}.npz").unlink(missing_ok=True)
    return path


def _rounds(run_dir: Path) -> list[int]:
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := PATTERN.search(p.name)))


def load_latest(run_dir: Path) -> Checkpoint | None:
    """The newest checkpoint, or None for a fresh run; a corrupt one raises CheckpointError (untouched)."""
    rounds = _rounds(run_dir)
    if not rounds:
        return None
    return load_checkpoint(checkpoint_dir(run_dir) / f"round-{rounds[-1]:04d}.npz")


def load_checkpoint(path: Path) -> Checkpoint:
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            shared = [data[f"shared_{i}"] for i in range(int(meta["n_shared"]))]
            optimizer = {slot: [data[f"opt_{slot}_{i}"] for i in range(len(shared))]
                         for slot in meta["optimizer_slots"]}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError, EOFError) as exc:
        raise CheckpointError(
            f"{path}: corrupt checkpoint ({exc!r}); it was left as is — move it aside to resume from the "
            "previous round's checkpoint") from exc
    round_ = int(meta.pop("round"))
    meta.pop("n_shared"), meta.pop("optimizer_slots")
    return Checkpoint(round_, shared, optimizer, meta)
