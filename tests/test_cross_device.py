"""Cross-device: one user per client, through the real ServerApp and ClientApp (in process, no Ray)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from client.app import build_client_app
from shared.config import RunConfig
from tests.conftest import TINY_USERS
from tests.inprocess import run_in_process


def test_one_user_per_client_run_completes_with_every_user_a_client(make_config: Callable[..., RunConfig],
                                                                   tmp_path: Path) -> None:
    config = make_config(partition="one-user-per-client", privacy="user", num_rounds=2, user_sample_rate=1.0,
                         run_dir=str(tmp_path / "run"), population=TINY_USERS, delta=1e-3)
    summary, _ = run_in_process(config, build_client_app(config), TINY_USERS)
    assert summary["status"] == "completed"
    assert summary["clients"] == TINY_USERS
    assert summary["users"] == TINY_USERS
    stores = json.loads((tmp_path / "run" / "ledger.json").read_text())["stores"]
    assert len(stores) == TINY_USERS and all(len(entries) == 2 for entries in stores.values())
