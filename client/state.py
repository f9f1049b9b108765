"""What a store keeps at home between rounds: its users' private embeddings and its privacy ledger.

Kept on disk (the SuperNode's ``context.state`` lives in memory and is lost when the node restarts), written
atomically, and the ledger is saved *before* an update leaves the store, so a crash can never make the store
forget ε it spent.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.atomic import write_atomic, write_json_atomic
from shared.ledger import PrivacyLedger

EMBEDDINGS_FILE = "user_embeddings.npz"
LEDGER_FILE = "ledger.json"


@dataclass
class StoreState:
    directory: Path
    user_ids: np.ndarray          # raw ids (str) of the store's users, in local index order
    embeddings: dict[str, np.ndarray] | None  # private parameter name -> [n_users, dim]; None before round 1
    ledger: PrivacyLedger

    @classmethod
    def load(cls, directory: str | Path, user_ids: np.ndarray, delta: float) -> StoreState:
        directory = Path(directory)
        embeddings = None
        path = directory / EMBEDDINGS_FILE
        if path.exists():
            with np.load(path, allow_pickle=False) as data:
                stored_ids = data["user_ids"]
                embeddings = {k: data[k] for k in data.files if k != "user_ids"}
            if not np.array_equal(stored_ids, user_ids):
                raise ValueError(f"{path}: stored embeddings belong to other users than this store's data")
        ledger_path = directory / LEDGER_FILE
        ledger = PrivacyLedger.load(ledger_path) if ledger_path.exists() else PrivacyLedger(delta=delta)
        return cls(directory, user_ids, embeddings, ledger)

    def save(self) -> None:
        """Ledger first: an update must never be sent by a store whose ledger does not show it."""
        write_json_atomic(self.directory / LEDGER_FILE, self.ledger.to_json())
        if self.embeddings is not None:
            buffer = io.BytesIO()
            np.savez(buffer, allow_pickle=False, user_ids=self.user_ids, **self.embeddings)
            write_atomic(self.directory / EMBEDDINGS_FILE, lambda fh: fh.write(buffer.getvalue()))
