"""A loopback deployment for tests and benchmarks: the commands docker-compose.yml's services run, as plain
processes on 127.0.0.1 with ephemeral ports (TLS + node authentication, SuperLink ``--isolation process``).

Every process is started in its own session and stopped by ``Deployment.stop`` (the test's ``finally``), by
process group, so nothing outlives the test. Logs go to ``<root>/logs/<name>.log``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from shared import keys

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy"))
from split_partners import split_partners

__all__ = ["Deployment", "ProcessExited", "split_partners"]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PARTNER_SCRIPT = REPO / "deploy" / "partner.py"
WARM_FLOWER = REPO / "deploy" / "warm_flower.py"
FEDERATION = "fedrec"
READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 15.0
WATCH_INTERVAL_S = 0.5  # how often a run checks that the processes it needs are still there
LOG_TAIL_CHARS = 3000
# docker-compose.yml ``superlink`` environment: the admitted partners' public keys, registered by the
# SuperLink itself at every start (deploy/partner_registry.py ``KEYS_ENV``): no ``flwr supernode register``.
PARTNER_KEYS_ENV = "FEDREC_PARTNER_KEYS"
# docker-compose.yml ``serverapp`` environment: the ServerApp preloaded (this checkout is the app ``flwr run``
# ships), and Flower's own 1 s SuperExec poll: this SuperExec only waits for new runs, and each of its polls
# is an HTTPS request the SuperLink pays ~15 ms of CPU for (docs/results.md, "Deployment round").
# The SuperLink holds empty pulls (deploy/long_poll.py); the ServerApp side is told so by the same setting.
LONG_POLL_ENV = "FEDREC_LONG_POLL_SECONDS"
SERVERAPP_ENV = {"FEDREC_WARM_APP": "server.app", "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "1.0",
                 LONG_POLL_ENV: "2.0"}


class ProcessExited(RuntimeError):
    """A process the run needed exited before the run ended."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def superlink_command(secrets: Path, port: int, database: Path | None) -> list[str]:
    """docker-compose.yml ``superlink``: Flower's SuperLink, holding empty pulls (deploy/long_poll.py); paths
    differ (/run/secrets there). ``database`` None keeps Flower's in-memory state, as the compose file does
    (faster; runs and registrations do not survive a restart, but the SuperLink registers its partners' keys
    again at start, ``PARTNER_KEYS_ENV``); a path keeps it in SQLite there."""
    state = [] if database is None else ["--database", str(database)]
    return [sys.executable, str(WARM_FLOWER), "superlink",
            "--ssl-ca-certfile", str(secrets / keys.CA_CERT_FILE),
            "--ssl-certfile", str(secrets / keys.SUPERLINK_CERT_FILE),
            "--ssl-keyfile", str(secrets / keys.SUPERLINK_KEY_FILE),
            "--enable-supernode-auth", "--isolation", "process",
            "--superexec-auth-secret-file", str(secrets / keys.SUPEREXEC_SECRET_FILE),
            "--disable-runtime-dependency-installation",
            *state, "--host", "127.0.0.1", "--port", str(port)]


def serverapp_command(secrets: Path, port: int) -> list[str]:
    """docker-compose.yml ``serverapp``: Flower's SuperExec (forking, short polls) running each ServerApp."""
    return [sys.executable, str(WARM_FLOWER), "superexec", "--runtime-api-address", f"127.0.0.1:{port}",
            "--root-certificates", str(secrets / keys.CA_CERT_FILE),
            "--superexec-auth-secret-file", str(secrets / keys.SUPEREXEC_SECRET_FILE)]


def partner_command(secrets: Path, port: int, name: str, data_dir: Path, state_dir: Path, store: int,
                    runtime_port: int, ca: Path | None = None) -> list[str]:
    """docker-compose.yml ``partner-<k>``: deploy/partner.py (data check, SuperNode, warm SuperExec)."""
    return [sys.executable, str(PARTNER_SCRIPT), "--superlink", f"127.0.0.1:{port}",
            "--root-certificates", str(ca or secrets / keys.CA_CERT_FILE),
            "--auth-key", str(keys.node_key_paths(secrets, name).private_key),
            "--data-dir", str(data_dir), "--state-dir", str(state_dir), "--store", str(store),
            "--runtime-port", str(runtime_port)]


def partner_state(state_root: Path, run_dir: Path) -> Path:
    """Where a partner keeps one run's state in its volume (client/app.py ``partner_state_dir``)."""
    return state_root / "runs" / run_dir.name


@dataclass
class Deployment:
    root: Path
    partners: tuple[str, ...] = ("partner-1", "partner-2", "partner-3")
    port: int = field(default_factory=free_port)
    durable_state: bool = False  # True: SuperLink state in SQLite (docker-compose.yml keeps it in memory)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.secrets = self.root / "secrets"
        self.logs = self.root / "logs"
        self.home = self.root / "flwr-home"
        for directory in (self.logs, self.home):
            directory.mkdir(parents=True, exist_ok=True)
        keys.create_federation(self.secrets, self.partners, ("localhost", "127.0.0.1"))
        self.partner_keys = self.root / "partner-keys"  # the central team's list of admitted partners
        self.partner_keys.mkdir(exist_ok=True)
        for name in self.partners:
            shutil.copy(keys.node_key_paths(self.secrets, name).public_key, self.partner_keys / f"{name}.pub")
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{FEDERATION}"\n[superlink.{FEDERATION}]\n'
            f'address = "127.0.0.1:{self.port}"\nroot-certificates = "{self.secrets / keys.CA_CERT_FILE}"\n')
        self.env = {**os.environ, "FLWR_HOME": str(self.home), "PATH": f"{BIN}:{os.environ['PATH']}",
                    "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_TELEMETRY_ENABLED": "0",  # as the images' ENV
                    "PYTHONPATH": str(REPO)}

    # -- processes -------------------------------------------------------------------------------------------
    def start(self, name: str, command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("ab")
        process = subprocess.Popen(command, cwd=self.root, env={**self.env, **(env or {})}, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        self.processes[name] = process
        return process

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes.pop(name)
        if process.poll() is None:
            os.killpg(process.pid, sig)
        process.wait(timeout=STOP_GRACE_S)

    def stop(self) -> None:
        for name in list(self.processes):
            process = self.processes[name]
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for name in list(self.processes):
            process = self.processes.pop(name)
            try:
                process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            # Children (flwr-serverapp, ClientApp forks) share the group: make sure none is left.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- the central team's side ---------------------------------------------------------------------------
    def start_superlink(self) -> None:
        """As in docker-compose.yml: it registers the partners of ``partner_keys`` itself when it starts."""
        database = self.root / "superlink.db" if self.durable_state else None
        self.start("superlink", superlink_command(self.secrets, self.port, database),
                   {PARTNER_KEYS_ENV: str(self.partner_keys)})
        wait_for_port(self.port)

    def start_serverapp_side(self) -> None:
        """As in docker-compose.yml (``SERVERAPP_ENV``); a long-poll setting in this process's environment (a
        benchmark's, 0 to compare without) applies to the SuperLink and the ServerApp side alike."""
        override = {LONG_POLL_ENV: os.environ[LONG_POLL_ENV]} if LONG_POLL_ENV in os.environ else {}
        self.start("serverapp", serverapp_command(self.secrets, self.port), {**SERVERAPP_ENV, **override})

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        return subprocess.run(self.flwr_command(*args), cwd=self.root, env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    @staticmethod
    def flwr_command(*args: str) -> list[str]:
        return [str(BIN / "flwr"), *args]

    def run_command(self, overrides: str) -> list[str]:
        """``flwr run`` of the main job (this repository's app), streamed until it ends."""
        return self.flwr_command("run", str(REPO), FEDERATION, "--run-config", overrides, "--stream")

    def run(self, overrides: str, timeout: float, watch: bool = False) -> subprocess.CompletedProcess:
        """``flwr run .`` of the main job, streamed until it ends.

        A run waits for its stores as long as it takes, so a partner that died at start-up (a bad mount, a
        broken install) held the caller for the whole ``timeout``. With ``watch``, every process of this
        deployment that is up when the run starts must stay up: when one exits first, the run is stopped and
        ``ProcessExited`` says which, with what code, and how its log ends.
        """
        must_stay_up = [name for name, p in self.processes.items() if p.poll() is None] if watch else []
        out, err = self.logs / "flwr-run.out", self.logs / "flwr-run.err"
        with out.open("w") as out_file, err.open("w") as err_file:
            process = subprocess.Popen(self.run_command(overrides), cwd=self.root, env=self.env,
                                       stdout=out_file, stderr=err_file)
            deadline = time.monotonic() + timeout
            try:
                while True:
                    try:
                        process.wait(timeout=min(WATCH_INTERVAL_S, max(0.0, deadline - time.monotonic())))
                        break
                    except subprocess.TimeoutExpired:
                        self._check_still_up(must_stay_up)
                        if time.monotonic() >= deadline:
                            raise subprocess.TimeoutExpired(process.args, timeout) from None
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        return subprocess.CompletedProcess(process.args, process.returncode, out.read_text(errors="replace"),
                                           err.read_text(errors="replace"))

    def _check_still_up(self, names: list[str]) -> None:
        for name in names:
            code = self.processes[name].poll()
            if code is not None:
                tail = self.log(name)[-LOG_TAIL_CHARS:]
                raise ProcessExited(f"{name} exited with code {code} before the run ended; "
                                    f"{self.logs / f'{name}.log'} ends with:\n{tail}")

    # -- partners --------------------------------------------------------------------------------------------
    def start_partner(self, name: str, data_dir: Path, store: int, ca: Path | None = None,
                      key_of: str | None = None, max_retries: int | None = None) -> subprocess.Popen:
        """Partner ``name`` (its state volume: ``state_dir(name)``), with ``key_of``'s key if given."""
        command = partner_command(self.secrets, self.port, key_of or name, data_dir, self.state_dir(name),
                                  store, free_port(), ca)
        if max_retries is not None:
            command += ["--max-retries", str(max_retries)]
        return self.start(name, command)

    def state_dir(self, name: str) -> Path:
        return self.root / "state" / name
