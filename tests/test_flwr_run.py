"""`flwr run .` runs the main job offline against a SuperLink started here (no `uv sync`, no network)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_flwr_run_completes_offline_with_own_superlink(tmp_path: Path, tiny_data: Path) -> None:
    home, port = tmp_path / "flwr-home", _free_port()
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "t"\n[superlink.t]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
    }
    superlink = subprocess.Popen(
        [
            str(BIN / "flower-superlink"),
            "--insecure",
            "--simulation",
            "--disable-runtime-dependency-installation",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--database",
            str(home / "state.db"),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        time.sleep(5)
        run_dir = tmp_path / "run"
        overrides = (
            f"dataset='{tiny_data}' privacy='none' secagg=false num-rounds=2 gmf-dim=4 mlp-dim=8 "
            f"mlp-layers='16,8' run-dir='{run_dir}'"
        )
        done = subprocess.run(
            [
                str(BIN / "flwr"),
                "run",
                str(REPO),
                "t",
                "--federation-config",
                "num-supernodes=3",
                "--run-config",
                overrides,
                "--stream",
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "completed"
        assert summary["rounds"] == 2
        assert summary["clients"] == 3
        assert not (home / "runtime-envs").exists() or not any((home / "runtime-envs").iterdir())
    finally:
        os.killpg(superlink.pid, 15)
        superlink.wait(timeout=30)
        shutil.rmtree(home / "local-superlink", ignore_errors=True)
