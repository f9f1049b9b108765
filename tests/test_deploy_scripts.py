"""Fast checks of the deployment pieces the loopback tests exercise end to end (deploy/, client, server)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from client.app import partner_state_dir
from server.strategy import minimum_stores
from simulations.loopback import Deployment, ProcessExited, split_partners
from tests.conftest import TINY_STORES, TINY_USERS, tiny_config, write_tiny_dataset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "deploy"))
import partner  # noqa: E402
import warm_flower  # noqa: E402


def _users(path: Path) -> set[str]:
    with path.open(newline="") as handle:
        return {row["user_id"] for row in csv.DictReader(handle)}


def test_split_gives_each_partner_its_own_users_and_the_whole_catalog(tmp_path: Path) -> None:
    dataset = write_tiny_dataset(tmp_path / "data")
    partners = split_partners(dataset, tmp_path / "out")
    assert [p.name for p in partners] == ["partner-1", "partner-2", "partner-3"]
    users = [_users(p / "interactions.csv") for p in partners]
    assert sum(len(u) for u in users) == TINY_USERS
    assert set.union(*users) == _users(dataset / "interactions.csv")
    assert all((p / "items.csv").read_bytes() == (dataset / "items.csv").read_bytes() for p in partners)
    assert (tmp_path / "out" / "federation" / "users.csv").is_file()


def test_a_valid_data_mount_passes(tmp_path: Path) -> None:
    assert partner.check_data_mount(write_tiny_dataset(tmp_path / "data")) is None


def test_a_missing_data_mount_is_named(tmp_path: Path) -> None:
    assert partner.check_data_mount(tmp_path / "nowhere") == (
        f"data mount {tmp_path / 'nowhere'}: not a directory (mount the partner's CSV files there)")


def test_a_malformed_data_mount_names_file_line_and_field(tmp_path: Path) -> None:
    data = write_tiny_dataset(tmp_path / "data")
    lines = (data / "interactions.csv").read_text().splitlines()
    lines[5] = "4,7,last tuesday,3"
    (data / "interactions.csv").write_text("\n".join(lines) + "\n")
    problem = partner.check_data_mount(data)
    assert problem is not None
    assert f"{data / 'interactions.csv'}:6: timestamp" in problem


def test_partner_with_a_bad_mount_exits_2_before_starting_flower(tmp_path: Path) -> None:
    started = time.monotonic()
    command = [sys.executable, str(REPO / "deploy" / "partner.py"), "--superlink", "127.0.0.1:1",
               "--insecure", "--data-dir", str(tmp_path / "none"), "--state-dir", str(tmp_path / "s")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == partner.EXIT_BAD_DATA
    assert "fedrec partner: not joining the federation: data mount" in done.stderr
    assert "Starting Flower SuperNode" not in done.stdout + done.stderr
    assert time.monotonic() - started < 60


def test_an_unwritable_state_dir_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert partner.check_state_dir(blocker / "state") is not None


@pytest.mark.parametrize(("overrides", "expected"), [
    ({}, len(TINY_STORES)),                                                    # everyone, by default
    ({"accept_failures": True}, 1),                                            # no DP, no SecAgg+
    ({"accept_failures": True, "privacy": "user", "secagg": True, "secagg_num_shares": 3,
      "secagg_reconstruction_threshold": 2, "noise_share_stores": 2}, 2),      # K and the threshold
])
def test_rounds_wait_for_all_stores_unless_failures_are_accepted(tiny_data: Path, overrides: dict,
                                                                 expected: int) -> None:
    assert minimum_stores(tiny_config(tiny_data, **overrides), len(TINY_STORES)) == expected


def test_partner_state_is_kept_per_run_dir_so_a_resumed_run_finds_it(tiny_data: Path) -> None:
    root = Path("/state")
    named = tiny_config(tiny_data, run_dir="/runs/demo")
    assert partner_state_dir(root, named, 11) == partner_state_dir(root, named, 12) == root / "runs" / "demo"
    assert partner_state_dir(root, tiny_config(tiny_data), 12) == root / "runs" / "run-12"


def test_forked_tasks_get_the_arguments_flowers_subprocess_executor_passes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor import subprocess_executor
    from flwr.supercore.superexec.executor.types import ExecutionSpec

    spec = ExecutionSpec(task_type=TaskType.CLIENT_APP, runtime_api_address="127.0.0.1:9094", token="t0k",
                         insecure=False, root_certificates_path="/ca.crt", runtime_dependency_install=False,
                         parent_pid=42, suppress_output=False, task_id=7)
    launched: list[list[str]] = []
    monkeypatch.setattr(subprocess_executor.subprocess, "Popen", lambda args, **_: launched.append(args))
    subprocess_executor.SubprocessExecutor().launch(spec)
    assert warm_flower.task_argv(spec) == launched[0]


def test_fast_polling_caps_flowers_sleeps_and_object_pull_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore.inflatable import inflatable_utils
    from flwr.superlink.grid import http_grid
    from flwr.supernode import start_client_internal

    for function in vars(inflatable_utils).values():  # restored after the test, like the modules' time
        if callable(function) and getattr(function, "__kwdefaults__", None):
            monkeypatch.setattr(function, "__kwdefaults__", dict(function.__kwdefaults__))
    defaults = inflatable_utils.pull_objects.__kwdefaults__
    monkeypatch.setattr(http_grid, "time", http_grid.time)
    monkeypatch.setattr(start_client_internal, "time", start_client_internal.time)
    warm_flower.install_fast_polling(0.05)
    started = time.monotonic()
    http_grid.time.sleep(3)
    assert time.monotonic() - started < 1.0
    assert defaults["backoff_cap"] == 0.05
    assert defaults["initial_backoff"] == pytest.approx(0.0125)


@pytest.mark.parametrize(("operator_value", "expected"), [(None, "0"), ("1", "1")])
def test_flower_telemetry_is_off_unless_the_operator_turns_it_on(operator_value: str | None,
                                                                 expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "FLWR_TELEMETRY_ENABLED"}
    if operator_value is not None:
        env["FLWR_TELEMETRY_ENABLED"] = operator_value
    probe = "import shared, flwr.supercore.telemetry as t; print(t.FLWR_TELEMETRY_ENABLED)"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip() == expected


def test_partner_data_is_built_once_and_rebuilt_when_the_files_change(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import client.app as client_app
    import shared.workload as workload
    from shared.config import from_mapping

    data_dir = write_tiny_dataset(tmp_path / "data")
    builds: list[str] = []
    encodings: list[int] = []
    real_load = workload.load_dataset

    def counting_load(directory: str) -> object:
        builds.append(directory)
        return real_load(directory)

    def stand_in_encoder(dataset: object, encoder: str) -> np.ndarray:  # the encoder has its own tests
        encodings.append(dataset.n_items)  # type: ignore[attr-defined]
        return np.ones((dataset.n_items, 4), dtype=np.float32)  # type: ignore[attr-defined]

    monkeypatch.setattr(workload, "load_dataset", counting_load)
    monkeypatch.setattr(workload, "_encoded_catalog", stand_in_encoder)
    monkeypatch.setenv(client_app.WARM_DATA_ENV, str(data_dir))
    assert partner.WARM_DATA_ENV == client_app.WARM_DATA_ENV  # the launcher sets what the app reads
    workload._dataset_and_split.cache_clear()
    workload._workload.cache_clear()
    workload._features.cache_clear()
    client_app.warm()                                                # the SuperExec, before forking
    config = from_mapping({})
    assert config.item_tower != "id"                                 # the default tower reads catalog text
    first, features = workload.partner_workload(str(data_dir), config)  # a message: found in memory
    assert len(builds) == 1 and len(encodings) == 1
    assert first.split.n_users == first.dataset.n_users == TINY_USERS
    assert features is not None and not features.flags.writeable and not first.negatives.flags.writeable
    assert workload.partner_workload(str(data_dir), config)[0] is first
    workload.partner_workload(str(data_dir), from_mapping({"eval-seed": config.eval_seed + 1}))
    assert len(builds) == 1 and len(encodings) == 2                  # other settings: same data, own extras
    interactions = data_dir / "interactions.csv"
    lines = interactions.read_text().splitlines(keepends=True)
    interactions.write_text("".join(lines[:-1]))                     # the partner's data changes
    changed, _ = workload.partner_workload(str(data_dir), config)
    assert len(builds) == 2 and len(changed.split.train_items) == len(first.split.train_items) - 1


def test_superexec_runs_the_app_modules_warm_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    import client.app as client_app

    called: list[bool] = []
    monkeypatch.setattr(warm_flower, "WARM_MODULES", ())
    monkeypatch.setattr(client_app, "warm", lambda: called.append(True))
    monkeypatch.setenv(warm_flower.WARM_APP_ENV, "client.app")
    warm_flower._preload()
    assert called == [True]


def test_the_ml100k_deployment_workload_deals_whole_stores_to_three_partners(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy_round --workload ml-100k: each region (store) of the main job goes whole to one partner, every
    user is kept, and split_partners then finds exactly the benchmark's three partners."""
    import shared.datasets
    from simulations.benchmarks import deploy_round

    source = write_tiny_dataset(tmp_path / "source")
    users = sorted(_users(source / "interactions.csv"))
    store_of = {user: f"region-{n % 5}" for n, user in enumerate(users)}  # five stores for three partners
    with (source / "users.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([("user_id", "store"), *store_of.items()])
    monkeypatch.setattr(shared.datasets, "movielens_100k", lambda: source)
    out = deploy_round.movielens_three_partners(tmp_path / "three")
    with (out / "users.csv").open(newline="") as handle:
        partner_of = {row["user_id"]: row["store"] for row in csv.DictReader(handle)}
    assert partner_of.keys() == store_of.keys()
    assert set(partner_of.values()) == set(deploy_round.PARTNERS)
    for store in set(store_of.values()):
        assert len({partner_of[u] for u, s in store_of.items() if s == store}) == 1
    assert (out / "interactions.csv").read_bytes() == (source / "interactions.csv").read_bytes()
    assert len(split_partners(out, tmp_path / "mounts")) == len(deploy_round.PARTNERS)


def test_an_installed_fab_is_not_unpacked_again_but_any_other_fab_is(tmp_path: Path) -> None:
    """Flower's ``install_from_fab`` unzips and hash-checks the whole FAB on every task; the wrapper reuses
    the directory a FAB with the same full SHA-256 was installed to, and installs any other FAB as before."""
    import hashlib

    installs = []

    def install(fab: bytes, install_dir: Path | None = None, skip_prompt: bool = False) -> Path:
        installs.append(fab)
        path = tmp_path / "apps" / f"fedrec.fedrec.1.0.{hashlib.sha256(fab).hexdigest()[:8]}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    install_or_reuse = warm_flower.installed_once(install)
    first = install_or_reuse(b"fab one", tmp_path, True)
    assert install_or_reuse(b"fab one", tmp_path, True) == first and installs == [b"fab one"]
    assert (first / warm_flower.FAB_HASH_FILE).read_text() == hashlib.sha256(b"fab one").hexdigest()
    install_or_reuse(b"fab two", tmp_path, True)
    assert installs == [b"fab one", b"fab two"]
    (first / warm_flower.FAB_HASH_FILE).write_text("0" * 64)  # a directory whose record does not match
    install_or_reuse(b"fab one", tmp_path, True)
    assert installs == [b"fab one", b"fab two", b"fab one"]


def python_command(code: str) -> list[str]:
    return [sys.executable, "-c", code]


@pytest.fixture
def stand_in_deployment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Deployment]:
    """A Deployment whose processes and ``flwr run`` are stand-ins, so ``run``'s watch is seen in seconds."""
    deployment = Deployment(tmp_path)
    monkeypatch.setattr(Deployment, "run_command", lambda _self, overrides: python_command(overrides))
    try:
        yield deployment
    finally:
        deployment.stop()


def test_a_watched_run_stops_as_soon_as_a_process_it_needs_exits(stand_in_deployment: Deployment) -> None:
    stand_in_deployment.start("superlink", python_command("import time; time.sleep(60)"))
    stand_in_deployment.start("partner-1", python_command(
        "import sys, time; time.sleep(1); print('data mount /data: not a directory', flush=True); "
        "sys.exit(2)"))
    started = time.monotonic()
    with pytest.raises(ProcessExited, match=r"(?s)partner-1 exited with code 2 .*data mount /data: not a"):
        stand_in_deployment.run("import time; time.sleep(60)", timeout=120, watch=True)
    assert time.monotonic() - started < 30  # not the run's 120 s
    assert stand_in_deployment.processes["superlink"].poll() is None  # only the run was stopped


def test_a_run_returns_what_flwr_run_printed_and_times_out_like_subprocess_run(
        stand_in_deployment: Deployment) -> None:
    stand_in_deployment.start("partner-1", python_command("import sys; sys.exit(2)"))  # down before the run
    stand_in_deployment.processes["partner-1"].wait()
    done = stand_in_deployment.run("import sys; print('run finished'); sys.exit(3)", timeout=60, watch=True)
    assert (done.returncode, done.stdout.strip()) == (3, "run finished")
    with pytest.raises(subprocess.TimeoutExpired):
        stand_in_deployment.run("import time; time.sleep(60)", timeout=1)
