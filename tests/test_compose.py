"""docker-compose.yml is valid and every command, flag, port, volume, secret and file it names exists.

No Docker engine or ``docker compose`` plugin here or in CI: the file is validated with ``jsonschema`` against
the Compose Specification schema that Debian's docker-compose 1.29.2 validates with (read out of its wheel,
fetched from the package registry like ML-100K's fallback and cached; installing it would pin PyYAML and
jsonschema versions that break our stack), and each service's command is checked
against the program it runs (its executable in the venv, its flags in that program's parser or ``--help``).
Generated paths (deploy/secrets, deploy/data) are produced by the documented commands into a temporary
directory and must then all exist.
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from shared.atomic import write_atomic
from shared.datasets import data_root, download_wheel
from simulations import loopback
from tests.conftest import write_tiny_dataset

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COMPOSE = REPO / "docker-compose.yml"
COMPOSE_REQUIREMENT = "docker-compose==1.29.2"
COMPOSE_WHEEL_GLOB = "docker_compose-1.29.2-*.whl"
SCHEMA_MEMBER = "compose/config/compose_spec.json"
APP_ROOT = "/app/"  # where the Dockerfiles copy the repository
SECRETS_MOUNT = "/run/secrets/"
GENERATED = ("./deploy/secrets/", "./deploy/data/")
PARTNERS = ("partner-1", "partner-2", "partner-3")
FLAG = re.compile(r"--[a-z][a-z0-9-]*")


@functools.cache
def schema() -> dict[str, Any]:
    """docker-compose 1.29.2's Compose Specification schema, cached under the data dir after one download."""
    cached = data_root() / "compose-schema" / "1.29.2" / "compose_spec.json"
    if not cached.exists():
        with tempfile.TemporaryDirectory(prefix="fedrec-compose-") as tmp:
            wheel = download_wheel(COMPOSE_REQUIREMENT, COMPOSE_WHEEL_GLOB, Path(tmp))
            with zipfile.ZipFile(wheel) as archive:
                content = archive.read(SCHEMA_MEMBER)
        write_atomic(cached, lambda fh: fh.write(content))
    return json.loads(cached.read_text())


@functools.cache
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """deploy/ as the documented commands leave it: `fedrec keys federation`, `split_partners.py`."""
    root = tmp_path_factory.mktemp("generated")
    keys = subprocess.run([str(BIN / "fedrec"), "keys", "federation", "--out", str(root / "secrets")],
                          capture_output=True, text=True, timeout=60)
    assert keys.returncode == 0, keys.stderr
    loopback.split_partners(write_tiny_dataset(root / "dataset"), root / "data")
    return root


def program_flags(command: list[str]) -> set[str]:
    """Flags the program a service runs accepts: from its own parser where we own it, else its --help."""
    if command[0] == "python" and command[1].endswith("deploy/warm_flower.py"):
        return _help_flags("flower-" + command[2])
    if command[0] == "python":
        return set()  # deploy scripts: parsed for real in test_partner_command_parses
    if command[0] == "fedrec":
        return set()  # parsed for real in test_recommender_command_parses
    return _help_flags(command[0])


@functools.cache
def _help_flags(program: str) -> set[str]:
    done = subprocess.run([str(BIN / program), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(FLAG.findall(done.stdout))


def test_compose_file_validates_against_the_compose_specification() -> None:
    validator = jsonschema.Draft7Validator(schema())
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose())]
    assert errors == []


def test_schema_rejects_a_broken_compose_file() -> None:
    broken = {**compose(), "services": {"superlink": {**services()["superlink"], "ports": "9093"}}}
    assert not jsonschema.Draft7Validator(schema()).is_valid(broken)


def test_federation_has_superlink_serverapp_three_partners_and_a_recommender() -> None:
    assert {"superlink", "serverapp", *PARTNERS, "recommender-1"} == set(services())


@pytest.mark.parametrize("name", sorted(yaml.safe_load(COMPOSE.read_text())["services"]))
def test_service_executable_and_scripts_exist(name: str) -> None:
    command = services()[name]["command"]
    assert (BIN / command[0]).exists(), f"{name}: {command[0]} is not installed in the venv"
    for token in command:
        if token.startswith(APP_ROOT):
            assert (REPO / token[len(APP_ROOT):]).is_file(), f"{name}: {token} is not in the repository"


@pytest.mark.parametrize("name", ["superlink", "serverapp"])
def test_service_flags_are_accepted_by_flower(name: str) -> None:
    command = services()[name]["command"]
    unknown = {flag for flag in command if flag.startswith("--")} - program_flags(command)
    assert unknown == set(), f"{name}: flags its program does not know"


@pytest.mark.parametrize("name", PARTNERS)
def test_partner_command_parses(name: str) -> None:
    sys.path.insert(0, str(REPO / "deploy"))
    import partner

    command = services()[name]["command"]
    args = partner.parse_args(command[2:])
    assert args.auth_key == Path(f"{SECRETS_MOUNT}{name}.key")
    assert str(args.data_dir) in [v.split(":")[1] for v in services()[name]["volumes"]]
    assert str(args.state_dir) in [v.split(":")[1] for v in services()[name]["volumes"]]
    assert args.store == PARTNERS.index(name)


def test_partner_supernode_flags_are_accepted_by_flower() -> None:
    sys.path.insert(0, str(REPO / "deploy"))
    import partner

    args = partner.parse_args(services()["partner-1"]["command"][2:])
    supernode = partner.supernode_command(args)[3:]
    superexec = partner.superexec_command(args, 1)[3:]
    assert {f for f in supernode if f.startswith("--")} <= _help_flags("flower-supernode")
    assert {f for f in superexec if f.startswith("--")} <= _help_flags("flower-superexec")


def test_recommender_command_parses() -> None:
    from simulations.cli import build_parser

    command = services()["recommender-1"]["command"]
    assert command[:2] == ["fedrec", "serve"]
    args = build_parser().parse_args(command[1:])
    assert args.port == 50051
    assert args.host == "0.0.0.0"


@pytest.mark.parametrize("name", sorted(yaml.safe_load(COMPOSE.read_text())["services"]))
def test_published_ports_are_the_ports_the_command_listens_on(name: str) -> None:
    service = services()[name]
    command = service["command"]
    for mapping in service.get("ports", []):
        container_port = mapping.split(":")[-1]
        assert command[command.index("--port") + 1] == container_port, f"{name}: {mapping}"


@pytest.mark.parametrize("name", sorted(yaml.safe_load(COMPOSE.read_text())["services"]))
def test_mounted_paths_exist_or_are_generated(name: str, generated: Path) -> None:
    for volume in services()[name].get("volumes", []):
        source = volume.split(":")[0]
        if not source.startswith("./"):
            assert source in compose()["volumes"], f"{name}: named volume {source} is not declared"
        elif source.startswith(GENERATED):
            kind, rest = source[len("./deploy/"):].split("/", 1)
            made = (generated / kind / rest).exists()
            assert made, f"{name}: {source} is not made by the documented commands"
        else:
            assert (REPO / source).exists(), f"{name}: {source} is not in the repository"


def test_secret_files_are_generated_and_private_keys_are_0600(generated: Path) -> None:
    for name, secret in compose()["secrets"].items():
        source = secret["file"]
        assert source.startswith("./deploy/secrets/"), f"{name}: secrets come from deploy/secrets"
        path = generated / "secrets" / source[len("./deploy/secrets/"):]
        assert path.is_file(), f"{name}: {source} is not produced by `fedrec keys federation`"
        if name.endswith((".key", ".secret")):
            assert path.stat().st_mode & 0o777 == 0o600, f"{name}: {oct(path.stat().st_mode)}"


@pytest.mark.parametrize("name", sorted(yaml.safe_load(COMPOSE.read_text())["services"]))
def test_every_secret_the_command_reads_is_mounted(name: str) -> None:
    service = services()[name]
    mounted = set(service.get("secrets", []))
    assert mounted <= set(compose()["secrets"]), f"{name}: undeclared secret"
    read = {t[len(SECRETS_MOUNT):] for t in service["command"] if t.startswith(SECRETS_MOUNT)}
    assert read <= mounted, f"{name}: reads secrets it does not mount"


def test_images_are_built_from_dockerfiles_whose_sources_exist() -> None:
    built = {s["image"]: s["build"]["dockerfile"] for s in services().values() if "build" in s}
    assert {s["image"] for s in services().values()} <= set(built)
    for dockerfile in built.values():
        text = (REPO / dockerfile).read_text()
        assert "USER fedrec" in text, f"{dockerfile}: runs as root"
        for line in text.splitlines():
            if line.startswith("COPY") and "--from=" not in line:
                sources = [t for t in line.split()[1:-1] if not t.startswith("--")]
                assert all((REPO / s).exists() for s in sources), f"{dockerfile}: {line}"


def test_images_copy_every_deploy_module_their_entry_scripts_import() -> None:
    """deploy/ scripts import each other by name (``import long_poll``): an image without one cannot start."""
    local = {p.stem for p in (REPO / "deploy").glob("*.py")}
    needed = {"warm_flower", "partner"}
    for script in sorted(needed):
        tree = ast.parse((REPO / "deploy" / f"{script}.py").read_text())
        needed |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                   for alias in node.names if alias.name in local}
        needed |= {node.module for node in ast.walk(tree)
                   if isinstance(node, ast.ImportFrom) and node.module in local}
    assert "long_poll" in needed
    for dockerfile in ("server/Dockerfile", "client/Dockerfile"):
        lines = (REPO / dockerfile).read_text().splitlines()
        copied = {Path(t).stem for line in lines if line.startswith("COPY")
                  for t in line.split() if t.startswith("deploy/")}
        assert needed <= copied, f"{dockerfile}: does not copy {sorted(needed - copied)}"


def test_no_key_material_can_enter_an_image() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    assert "deploy/secrets" in ignored
    assert "**/*.key" in ignored


def test_loopback_tests_run_the_compose_commands() -> None:
    """The e2e tests' processes use the same flags as the compose services (only paths and ports differ)."""
    secrets, port = Path("/s"), 1
    same = {
        "superlink": loopback.superlink_command(secrets, port, None),  # in-memory state, as shipped
        "serverapp": loopback.serverapp_command(secrets, port),
        "partner-1": loopback.partner_command(secrets, port, "partner-1", Path("/d"), Path("/st"), 0, 2),
    }
    for name, local in same.items():
        flags = {t for t in services()[name]["command"] if t.startswith("--")}
        local_flags = {t for t in local if t.startswith("--")}
        assert flags - {"--runtime-port"} == local_flags - {"--runtime-port"}, name


def test_loopback_serverapp_side_has_the_compose_environment() -> None:
    environment = services()["serverapp"]["environment"]
    assert {k: environment.get(k) for k in loopback.SERVERAPP_ENV} == loopback.SERVERAPP_ENV


def test_fedrec_keys_parser_is_registered() -> None:
    from simulations.cli import build_parser

    args = build_parser().parse_args(["keys", "node", "--name", "partner-4"])
    assert isinstance(args, argparse.Namespace)
    assert args.name == "partner-4"


def test_the_superlink_is_given_every_partners_public_key_to_register() -> None:
    """An in-memory SuperLink forgets registrations when it restarts: it registers the *.pub secrets it
    mounts at every start (deploy/partner_registry.py), which must be the keys the partners sign with."""
    sys.path.insert(0, str(REPO / "deploy"))
    import partner_registry

    superlink = services()["superlink"]
    assert partner_registry.KEYS_ENV == loopback.PARTNER_KEYS_ENV
    assert superlink["environment"][partner_registry.KEYS_ENV] == SECRETS_MOUNT.rstrip("/")
    signing = {t[len(SECRETS_MOUNT):] for name, s in services().items() if name.startswith("partner-")
               for t in s["command"] if t.startswith(SECRETS_MOUNT) and t.endswith(".key")}
    assert len(signing) == 3
    admitted = {name for name in superlink["secrets"] if name.endswith(partner_registry.KEY_SUFFIX)}
    assert admitted == {key.removesuffix(".key") + partner_registry.KEY_SUFFIX for key in signing}
    for name in admitted:  # each .pub is the public half of the partner's private key file
        private = compose()["secrets"][name.removesuffix(partner_registry.KEY_SUFFIX) + ".key"]["file"]
        assert compose()["secrets"][name]["file"] == private + partner_registry.KEY_SUFFIX


def test_partners_come_back_whatever_their_exit_status() -> None:
    """After a SuperLink restart a partner's SuperNode is refused at its next request and exits; refused at a
    heartbeat, flwr 1.41 exits with status 0 (tests/test_deploy_e2e.py), which ``on-failure`` would leave
    down."""
    for name, service in services().items():
        if name.startswith("partner-"):
            assert service["restart"] == "unless-stopped", name
