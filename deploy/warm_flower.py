"""Flower's own SuperExec, SuperNode and SuperLink with latency fixes for small federations (flwr 1.41).

``python deploy/warm_flower.py superexec <flower-superexec args>``,
``python deploy/warm_flower.py supernode <flower-supernode args>`` and
``python deploy/warm_flower.py superlink <flower-superlink args>`` run Flower's entry points unchanged (same
flags, APIs, tokens, TLS, node authentication) except for:

1. **Forked task processes.** Flower's SuperExec starts a fresh ``flwr-clientapp``/``flwr-serverapp`` per
   task (flwr 1.41 has no long-lived ClientApp: each message is a task with a one-time token), and each
   re-imports torch, Opacus and transformers (~6 s here); SecAgg+ sends four messages per node per round, so a
   deployment round cost ~90 s against ~1-2 s in simulation (``research/flower_probe.md``). Here the SuperExec
   imports them once and *forks* itself per task, and the child runs the very ``flwr-*`` console entry point
   with the arguments Flower's subprocess executor would pass. Each task still gets its own process (a crash
   or a leak ends with it), but it starts in milliseconds. The app's own modules are preloaded only when
   named in ``FEDREC_WARM_APP`` (e.g. ``client.app``): Flower imports the FAB's modules by name, so a
   preloaded module shadows the FAB's copy. Set it only where the installed fedrec *is* the app being run
   (the images, a checkout running its own FAB). A preloaded app module may define ``warm()``, called once
   before any fork: ``client.app`` loads the partner's data there, so no message rebuilds it. POSIX only
   (``os.fork``), as are the images.
2. **Shorter polling.** flwr 1.41 sleeps a hard-coded 3 s between polls in the SuperNode's pull loop
   (``supernode/start_client_internal.py``) and in the ServerApp's ``HttpGrid.send_and_receive``, and
   retries a message object that is not there yet after 1, 2, 4 ... 10 s (``inflatable_utils.pull_objects``);
   a SecAgg+ round has five request/reply stages, so those waits alone add ~15-30 s a round. They are
   capped at ``FEDREC_POLL_SECONDS`` (default ``DEFAULT_POLL_SECONDS``); SuperExec's task poll uses Flower's
   own ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``. Short polls would cost many small HTTPS requests, so the
   SuperLink and the SuperNode hold an empty pull until there is something to deliver (``long_poll.py``),
   and the SuperNode's own waits wake when its state changes.
3. **The app installed once per FAB.** Each task's ``flwr-clientapp`` calls Flower's ``install_from_fab``,
   which unzips the whole FAB into a temporary directory and checks every file's hash *before* finding the
   app already installed and discarding it: ~80 ms of every task's start here (profiled, 45 tasks of an
   ML-100K deployment run). ``install_fabs_once`` skips that when the FAB's full SHA-256 matches the one
   recorded (``FAB_HASH_FILE``) in the directory it was installed to; a first install, or any other FAB,
   goes through Flower's checks as before.
4. **Forks that do not copy the parent's heap.** Before each fork the SuperExec's objects are frozen
   (``gc.freeze``), so the child's garbage collections do not touch, and copy page by page, what it
   inherited. With partner data, evaluation candidates, catalog features (``client.app.warm``) and the RDP
   curve (on disk, ``shared/ledger.py``) no longer rebuilt per message, the three partners' forked tasks
   used 2.6 CPU-s a round instead of 3.05 (ML-100K, session 14).
5. **Partners admitted at every SuperLink start.** With ``FEDREC_PARTNER_KEYS`` naming a directory of the
   partners' public keys, the SuperLink registers them itself when its state is created
   (``partner_registry.py``): an in-memory SuperLink that restarts admits its partners again.
"""

from __future__ import annotations

import gc
import hashlib
import importlib
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import long_poll  # deploy/, beside these scripts
import partner_registry

POLL_ENV = "FEDREC_POLL_SECONDS"
# With the SuperLink and SuperNode holding empty pulls (long_poll.py), short caps no longer mean many
# requests: 0.05 s rounded ML-100K in 2.5 s against 2.6 s at 0.2 s (session 14, one run each).
DEFAULT_POLL_SECONDS = 0.05
SUPEREXEC_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
# Modules whose module-level ``time.sleep`` polls: capped by ``install_fast_polling``.
POLLING_MODULES = ("flwr.supernode.start_client_internal", "flwr.superlink.grid.http_grid")
INFLATABLE_MODULE = "flwr.supercore.inflatable.inflatable_utils"
PULL_BACKOFF_STEPS = 4  # the object-pull backoff starts at cap / 4 and doubles up to the cap
# Imported before any fork, so children inherit them loaded. Third-party only (see the module docstring).
# torch._dynamo: torch.func (user-level DP's per-user gradients) imports it on first use, which cost every
# training task ~0.5 s of CPU in its fresh fork.
WARM_MODULES = ("numpy", "torch", "torch._dynamo", "opacus", "transformers", "flwr.client", "flwr.clientapp",
                "flwr.server", "flwr.supernode.cli.flwr_clientapp", "flwr.superlink.cli.flwr_serverapp")
WARM_APP_ENV = "FEDREC_WARM_APP"
FAB_HASH_FILE = ".fedrec-fab-sha256"  # the full SHA-256 of the FAB an app directory was installed from
FAB_INSTALLERS = ("flwr.supernode.runtime.run_clientapp",)  # modules whose ``install_from_fab`` is wrapped
# The ServerApp's pause between pulls of its replies when the SuperLink holds empty pulls (it waits there).
HELD_PULL_PAUSE_SECONDS = 0.005
EXIT_FAILURE = 1
EXIT_USAGE = 2

log = logging.getLogger("fedrec.warm_flower")


def poll_seconds() -> float:
    value = float(os.environ.get(POLL_ENV, DEFAULT_POLL_SECONDS))
    if not 0.0 < value <= 3.0:
        raise ValueError(f"{POLL_ENV}: {value} must be in (0, 3] seconds")
    return value


def install_fast_polling(cap: float, sleep: Callable[[float], None] | None = None) -> None:
    """Cap Flower's polling waits at ``cap`` seconds: the polling modules get a ``time`` whose ``sleep`` waits
    at most ``cap`` (or is ``sleep``; all else is ``time``'s), object pulls a backoff of at most ``cap``."""

    def capped_sleep(seconds: float) -> None:
        time.sleep(min(seconds, cap))

    shim = SimpleNamespace(**{name: getattr(time, name) for name in dir(time) if not name.startswith("__")})
    shim.sleep = sleep or capped_sleep
    for name in POLLING_MODULES:
        module: ModuleType = importlib.import_module(name)
        module.time = shim  # type: ignore[attr-defined]
    # Message payloads are pulled object by object; an object not there yet is retried after a backoff that
    # starts at 1 s and doubles to 10 s (keyword defaults of these functions), which cost 5-8 s per message.
    inflatable = importlib.import_module(INFLATABLE_MODULE)
    for value in vars(inflatable).values():
        defaults = getattr(value, "__kwdefaults__", None)
        if callable(value) and defaults and "initial_backoff" in defaults:
            old_cap = defaults["backoff_cap"]
            defaults["initial_backoff"] = min(defaults["initial_backoff"], cap / PULL_BACKOFF_STEPS)
            defaults["backoff_cap"] = min(old_cap, cap)
            if defaults.get("max_tries_per_object"):  # same patience in seconds: max_time still bounds it
                defaults["max_tries_per_object"] = int(defaults["max_tries_per_object"] * old_cap
                                                       / defaults["backoff_cap"])


def installed_once(install: Callable[..., Path]) -> Callable[..., Path]:
    """``install`` (Flower's ``install_from_fab``), skipped for a FAB already installed and recorded so."""

    def install_or_reuse(fab_file: Path | bytes, install_dir: Path | None = None,
                         skip_prompt: bool = False) -> Path:
        if not isinstance(fab_file, bytes):
            return install(fab_file, install_dir, skip_prompt)
        from flwr.common.constant import APP_DIR, FAB_HASH_TRUNCATION
        from flwr.supercore.utils import get_flwr_home

        digest = hashlib.sha256(fab_file).hexdigest()
        apps = (install_dir.expanduser() if install_dir else get_flwr_home()) / APP_DIR
        for path in apps.glob(f"*.{digest[:FAB_HASH_TRUNCATION]}"):
            recorded = path / FAB_HASH_FILE
            if recorded.is_file() and recorded.read_text() == digest:
                return path
        from shared.atomic import write_atomic

        path = install(fab_file, install_dir, skip_prompt)
        write_atomic(path / FAB_HASH_FILE, lambda fh: fh.write(digest.encode()))  # whole digest or no file
        return path

    return install_or_reuse


def install_fabs_once() -> None:
    for name in FAB_INSTALLERS:
        module = importlib.import_module(name)
        module.install_from_fab = installed_once(module.install_from_fab)  # type: ignore[attr-defined]


def _preload() -> None:
    """Import the heavy modules, then the app's; an app module's ``warm()`` (if any) runs here, once."""
    app_modules = [m.strip() for m in os.environ.get(WARM_APP_ENV, "").split(",") if m.strip()]
    for name in (*WARM_MODULES, *app_modules):
        try:
            module = importlib.import_module(name)
        except ImportError as exc:  # a missing optional module only costs speed
            log.warning("warm_flower: could not preload %s: %s", name, exc)
            continue
        warm = getattr(module, "warm", None) if name in app_modules else None
        if callable(warm):
            try:
                warm()
            except Exception as exc:  # only speed is lost: each task reports its own errors
                log.warning("warm_flower: %s.warm() failed: %s", name, exc)


def _reap_children() -> None:
    """Collect finished children so they do not linger as zombies (the parent never waits for one)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def task_argv(spec: Any) -> list[str]:
    """The command line Flower's ``SubprocessExecutor.launch`` would run for ``spec`` (flwr 1.41)."""
    from flwr.supercore.constant import TASK_TYPE_TO_APPIO_API_ADDRESS_ARG, TASK_TYPE_TO_COMMAND

    argv = [TASK_TYPE_TO_COMMAND[spec.task_type], TASK_TYPE_TO_APPIO_API_ADDRESS_ARG[spec.task_type],
            spec.runtime_api_address, "--token", spec.token]
    if spec.insecure:
        argv.append("--insecure")
    elif spec.root_certificates_path is not None:
        argv += ["--root-certificates", spec.root_certificates_path]
    if spec.parent_pid is not None:
        argv += ["--parent-pid", str(spec.parent_pid)]
    if spec.runtime_dependency_install:
        argv.append("--allow-runtime-dependency-installation")
    return argv


def _run_entry_point(argv: list[str]) -> int:
    (entry,) = entry_points(group="console_scripts", name=argv[0])
    sys.argv = argv
    entry.load()()
    return 0


class ForkExecutor:
    """Flower's ``Executor`` protocol (``superexec/executor/types.py``): every task runs in a fork."""

    def get_eligible_capacity(self, supported_task_types: set, *, insecure: bool = False,
                              root_certificates_path: str | None = None) -> tuple[set, set[str]]:
        """Like Flower's subprocess executor: every supported task type, no capacity wait."""
        return supported_task_types, set()

    def wait_for_capacity(self, task_type: object = None, *, fab_hash: str | None = None,
                          insecure: bool = False, root_certificates_path: str | None = None) -> None:
        """Forks have no capacity gate."""

    def launch(self, spec: Any) -> Any:
        from flwr.supercore.superexec.executor.types import LaunchResult

        _reap_children()
        argv = task_argv(spec)
        sys.stdout.flush()
        sys.stderr.flush()
        # Everything the SuperExec holds goes to the collector's permanent generation, so a child's
        # collections never walk (and so never copy, page by page) the inherited heap of torch, data and app.
        gc.freeze()
        pid = os.fork()
        if pid == 0:  # the child: runs the task and exits, never returns into the SuperExec loop
            code = EXIT_FAILURE
            try:
                code = _run_entry_point(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else EXIT_FAILURE
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        _reap_children()

    def close(self) -> None:
        _reap_children()


def held_pull_pause(seconds: float) -> None:
    """The ServerApp's wait between pulls of its replies when its SuperLink holds them (it waits there)."""
    time.sleep(min(seconds, HELD_PULL_PAUSE_SECONDS))


def superlink_holds_pulls() -> bool:
    """Whether this process was told (``long_poll.WAIT_ENV`` set above 0) that its SuperLink holds empty pulls
    (``warm_flower.py superlink``); only then may the ServerApp re-pull its replies without pausing."""
    return long_poll.WAIT_ENV in os.environ and long_poll.settings()[0] > 0


def run_superexec(argv: list[str]) -> None:
    os.environ.setdefault(SUPEREXEC_POLL_ENV, str(poll_seconds()))
    _preload()
    cap = poll_seconds()
    install_fast_polling(cap, held_pull_pause if superlink_holds_pulls() else None)
    install_fabs_once()
    run_module = importlib.import_module("flwr.supercore.superexec.run_superexec")

    def get_executor(*_args: object, **_kwargs: object) -> ForkExecutor:
        return ForkExecutor()

    run_module.get_executor = get_executor  # type: ignore[attr-defined]
    from flwr.supercore.cli import flower_superexec

    sys.argv = ["flower-superexec", *argv]
    flower_superexec()


def run_supernode(argv: list[str]) -> None:
    channels = long_poll.install(long_poll.SUPERNODE)
    cap = poll_seconds()
    install_fast_polling(cap, long_poll.changes_or_timeout(channels["node"], cap) if channels else None)
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *argv]
    flower_supernode()


def run_superlink(argv: list[str]) -> None:
    long_poll.install(long_poll.SUPERLINK)
    partner_registry.install()
    from flwr.superlink.cli import flower_superlink

    sys.argv = ["flower-superlink", *argv]
    flower_superlink()


COMMANDS = {"superexec": run_superexec, "supernode": run_supernode, "superlink": run_superlink}


def main() -> int:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # before flwr is imported (see shared/__init__.py)
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(f"usage: warm_flower.py {{{','.join(COMMANDS)}}} <flower arguments>", file=sys.stderr)
        return EXIT_USAGE
    COMMANDS[sys.argv[1]](sys.argv[2:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
