"""Entry point of a partner container: check the data mount, then run a SuperNode and its warm SuperExec.

The partner image runs this (``docker-compose.yml``'s ``partner-*`` services), and the loopback tests run the
very same command as a plain process. It

1. refuses to join with a missing or malformed data mount: the error names the file, line and field
   (``shared/data.py``) and the process exits with ``EXIT_BAD_DATA`` before the SuperNode ever connects, so
   the federation carries on with the other partners instead of failing rounds on this one;
2. makes sure the state directory (the partner's volume: user embeddings, privacy ledger) is writable;
3. starts Flower's SuperNode with ``--isolation process`` (Runtime API on the container's loopback only) and
   Flower's SuperExec against it, both through ``deploy/warm_flower.py`` (forked ClientApps, short polls),
   forwards SIGTERM/SIGINT to both, and exits with the SuperNode's status when either stops (Flower logs
   "Exit Code: 305" when the SuperLink refuses this node's key).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

EXIT_BAD_DATA = 2
EXIT_BAD_STATE = 3
RUNTIME_HOST = "127.0.0.1"
DEFAULT_RUNTIME_PORT = 9094
POLL_SECONDS = 0.5
STOP_GRACE_SECONDS = 10.0
WARM_FLOWER = Path(__file__).resolve().with_name("warm_flower.py")
BIN = Path(sys.executable).parent
WARM_APP_ENV, WARM_APP = "FEDREC_WARM_APP", "client.app"
WARM_DATA_ENV = "FEDREC_WARM_DATA_DIR"  # client/app.py ``warm``: the SuperExec loads the data before forking


def check_data_mount(data_dir: Path) -> str | None:
    """None when ``data_dir`` holds a valid dataset, else an operator-readable reason."""
    from shared.data import DataError, load_dataset

    if not data_dir.is_dir():
        return f"data mount {data_dir}: not a directory (mount the partner's CSV files there)"
    try:
        dataset = load_dataset(data_dir)
    except (DataError, OSError, ValueError) as exc:
        return f"data mount {data_dir}: {exc}"
    if dataset.n_users == 0:
        return f"data mount {data_dir}: interactions.csv holds no users"
    return None


def check_state_dir(state_dir: Path) -> str | None:
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        probe = state_dir / ".writable"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return f"state directory {state_dir}: not writable ({exc.strerror})"
    return None


def supernode_command(args: argparse.Namespace) -> list[str]:
    node_config = f'data-dir="{args.data_dir}" state-dir="{args.state_dir}" store={args.store}'
    command = [sys.executable, str(WARM_FLOWER), "supernode", "--superlink", args.superlink,
               "--isolation", "process", "--host", RUNTIME_HOST, "--port", str(args.runtime_port),
               "--node-config", node_config]
    if args.insecure:
        command.append("--insecure")
    else:
        command += ["--root-certificates", str(args.root_certificates)]
    if args.auth_key:
        command += ["--auth-supernode-private-key", str(args.auth_key)]
    if args.max_retries is not None:
        command += ["--max-retries", str(args.max_retries)]
    return command


def superexec_command(args: argparse.Namespace, supernode_pid: int) -> list[str]:
    return [sys.executable, str(WARM_FLOWER), "superexec",
            "--runtime-api-address", f"{RUNTIME_HOST}:{args.runtime_port}", "--insecure",
            "--parent-pid", str(supernode_pid)]


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run(args: argparse.Namespace) -> int:
    problem = check_data_mount(args.data_dir) or check_state_dir(args.state_dir)
    if problem:
        print(f"fedrec partner: not joining the federation: {problem}", file=sys.stderr, flush=True)
        return EXIT_BAD_STATE if problem.startswith("state directory") else EXIT_BAD_DATA
    supernode = subprocess.Popen(supernode_command(args))
    # The partner image's fedrec is the app it runs: preload its ClientApp and its data too
    # (deploy/warm_flower.py, client/app.py ``warm``).
    warm = {WARM_APP_ENV: WARM_APP, WARM_DATA_ENV: str(args.data_dir)}
    superexec = subprocess.Popen(superexec_command(args, supernode.pid), env={**warm, **os.environ})
    processes = [supernode, superexec]
    stopping: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        while not stopping and all(p.poll() is None for p in processes):
            time.sleep(POLL_SECONDS)
    finally:
        _stop(processes)
    if stopping:
        return 0
    code = supernode.returncode if supernode.returncode is not None else superexec.returncode
    print(f"fedrec partner: {'SuperNode' if supernode.poll() is not None else 'SuperExec'} exited "
          f"with code {code}", file=sys.stderr, flush=True)
    return int(code or 0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--superlink", required=True, help="SuperLink address host:port")
    tls = parser.add_mutually_exclusive_group(required=True)
    tls.add_argument("--root-certificates", type=Path, help="the federation's CA certificate (ca.crt)")
    tls.add_argument("--insecure", action="store_true", help="no TLS (local experiments only)")
    parser.add_argument("--auth-key", type=Path, help="this partner's node-authentication private key")
    parser.add_argument("--data-dir", type=Path, required=True, help="the partner's CSV files (read-only)")
    parser.add_argument("--state-dir", type=Path, required=True,
                        help="the partner's volume: user embeddings, privacy ledger")
    parser.add_argument("--store", type=int, default=0,
                        help="this partner's store index (in logs and metrics)")
    parser.add_argument("--runtime-port", type=int, default=DEFAULT_RUNTIME_PORT,
                        help="SuperNode Runtime API port on loopback (one per SuperNode on a host)")
    parser.add_argument("--max-retries", type=int, help="give up after this many failed connection attempts")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, when run from a checkout
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # inherited by the SuperNode and its SuperExec
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
