"""deploy/partner_registry.py: the SuperLink registers the partners' keys of ``FEDREC_PARTNER_KEYS`` itself,
as ``flwr supernode register`` would, so an in-memory SuperLink that restarts admits its partners again."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from shared import keys

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "deploy"))
import partner_registry  # noqa: E402


def fresh_state():  # type: ignore[no-untyped-def]
    """A SuperLink's in-memory state, as ``flower-superlink`` builds it without ``--database``."""
    from flwr.server.superlink.linkstate import LinkStateFactory
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.superlink.federation import NoOpFederationManager

    return LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())


def cli_account():  # type: ignore[no-untyped-def]
    """The account the ``flwr`` CLI acts as on a SuperLink without account authentication."""
    from flwr.common.constant import NOOP_ACCOUNT_NAME, NOOP_FLWR_AID
    from flwr.supercore.auth.typing import AccountInfo

    return AccountInfo(flwr_aid=NOOP_FLWR_AID, account_name=NOOP_ACCOUNT_NAME)


@pytest.fixture
def partner_keys(tmp_path: Path) -> Path:
    """A directory of admitted partners' public keys, as the central team keeps it."""
    secrets, admitted = tmp_path / "secrets", tmp_path / "admitted"
    admitted.mkdir()
    for name in ("partner-1", "partner-2"):
        shutil.copy(keys.create_node_keys(secrets, name).public_key, admitted / f"{name}.pub")
    return admitted


def node_statuses(state) -> dict[int, str]:  # type: ignore[no-untyped-def]
    """What ``flwr supernode ls`` shows: every node of the CLI's account and its status."""
    from flwr.proto.control_pb2 import ListNodesRequest
    from flwr.superlink.servicer.control.control_handlers import list_nodes

    listing = list_nodes(ListNodesRequest(), cli_account(), state)
    return {node.node_id: node.status for node in listing.nodes_info}


def test_every_key_is_registered_as_the_cli_would_and_the_cli_can_remove_it(partner_keys: Path) -> None:
    from flwr.proto.control_pb2 import UnregisterNodeRequest
    from flwr.superlink.servicer.control.control_handlers import unregister_node

    state = fresh_state().state()
    registered = partner_registry.register_partners(partner_keys, state)
    assert sorted(registered) == ["partner-1.pub", "partner-2.pub"]
    for name, node_id in registered.items():  # the SuperLink knows each node by its key ...
        key = partner_registry.load_public_key(partner_keys / name)
        assert state.get_node_id_by_public_key(key) == node_id
    assert node_statuses(state) == dict.fromkeys(registered.values(), "registered")  # ... the CLI lists it
    # `flwr supernode unregister` may remove it: Flower refuses a node another account owns
    unregister_node(UnregisterNodeRequest(node_id=registered["partner-1.pub"]), cli_account(), state)
    assert node_statuses(state) == {registered["partner-1.pub"]: "unregistered",
                                    registered["partner-2.pub"]: "registered"}


def test_keys_already_registered_keep_their_node(partner_keys: Path) -> None:
    state = fresh_state().state()
    first = partner_registry.register_partners(partner_keys, state)
    assert partner_registry.register_partners(partner_keys, state) == {}  # a durable state after a restart
    assert set(node_statuses(state)) == set(first.values())


def test_bad_key_files_are_named_and_the_other_partners_still_admitted(
        partner_keys: Path, caplog: pytest.LogCaptureFixture) -> None:
    (partner_keys / "garbled.pub").write_text("ecdsa-sha2-nistp384 not-base64\n")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    (partner_keys / "rsa.pub").write_bytes(rsa_key.public_bytes(serialization.Encoding.OpenSSH,
                                                                serialization.PublicFormat.OpenSSH))
    (partner_keys / "notes.txt").write_text("not a key, not a .pub: ignored")
    state = fresh_state().state()
    with caplog.at_level(logging.ERROR, logger=partner_registry.log.name):
        registered = partner_registry.register_partners(partner_keys, state)
    assert sorted(registered) == ["partner-1.pub", "partner-2.pub"]
    assert f"{partner_keys / 'garbled.pub'}: not an OpenSSH public key" in caplog.text
    assert f"{partner_keys / 'rsa.pub'}: not an EC public key" in caplog.text
    assert "notes.txt" not in caplog.text


def test_a_missing_directory_is_reported_and_registers_nothing(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger=partner_registry.log.name):
        assert partner_registry.register_partners(tmp_path / "nowhere", fresh_state().state()) == {}
    assert f"{partner_registry.KEYS_ENV}={tmp_path / 'nowhere'}: not a directory" in caplog.text


def test_installed_the_superlink_registers_its_partners_once_when_its_state_is_created(
        partner_keys: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.server.superlink.linkstate import LinkStateFactory

    monkeypatch.setattr(LinkStateFactory, "state", LinkStateFactory.state)  # undone after the test
    monkeypatch.delenv(partner_registry.KEYS_ENV, raising=False)
    assert partner_registry.install() is False  # unset: Flower's own behaviour
    monkeypatch.setenv(partner_registry.KEYS_ENV, str(partner_keys))
    assert partner_registry.install() is True
    factory = fresh_state()
    state = factory.state()
    assert len(node_statuses(state)) == 2
    assert factory.state() is state and len(node_statuses(state)) == 2  # registered once
