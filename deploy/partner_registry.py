"""The SuperLink registers the partners' public keys itself, at every start (``FEDREC_PARTNER_KEYS``).

Why: docker-compose.yml keeps the SuperLink's state in memory (a 3-node ML-100K round takes 2.4 s against
4.1 s with Flower's SQLite state, docs/results.md "Deployment round"), and an in-memory SuperLink forgets
every ``flwr supernode register`` when it restarts: until someone registered the keys again, every partner
was refused (Flower exit code 305). With ``FEDREC_PARTNER_KEYS`` naming a directory of the partners' OpenSSH
public keys (``<partner>.pub``, as ``fedrec keys`` writes them), ``warm_flower.py superlink`` registers each
of them when its state is created, through Flower's own ``register_node`` handler, with the account the
``flwr`` CLI has on a SuperLink without account authentication. A registered node is therefore the same as
one the CLI registered: ``flwr supernode ls`` lists it, ``flwr supernode unregister`` removes it. Partners
that lost the SuperLink rejoin it on their own once it is back.

The directory is the list of admitted partners: removing a partner means deleting its key there *and*
unregistering its node (or it is admitted again at the next start). A key already registered (durable
``--database`` state) is left as it is; a file that is not an EC public key in OpenSSH format is reported,
naming it, and skipped: the other partners are still admitted.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

KEYS_ENV = "FEDREC_PARTNER_KEYS"
KEY_SUFFIX = ".pub"

log = logging.getLogger("flwr.fedrec.partner_registry")  # a child of Flower's logger: in the SuperLink's log


class PartnerKeyError(ValueError):
    """A key file that Flower would not accept; the message names the file."""


def load_public_key(path: Path) -> bytes:
    """``path``'s OpenSSH EC public key as the bytes ``flwr supernode register`` sends for it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes, uses_nist_ec_curve

    try:
        key = serialization.load_ssh_public_key(path.read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise PartnerKeyError(f"{path}: not an OpenSSH public key ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not uses_nist_ec_curve(key):
        raise PartnerKeyError(f"{path}: not an EC public key on a NIST curve (node authentication needs one)")
    return bytes(public_key_to_bytes(key))


def register_partners(directory: Path, state: Any) -> dict[str, int]:
    """Register every ``*.pub`` in ``directory`` with the SuperLink ``state``; returns {file name: node id}
    of those this call registered (keys already known keep their node, bad files are logged and skipped)."""
    from flwr.common.constant import NOOP_ACCOUNT_NAME, NOOP_FLWR_AID
    from flwr.proto.control_pb2 import RegisterNodeRequest  # pylint: disable=no-name-in-module
    from flwr.supercore.auth.typing import AccountInfo
    from flwr.supercore.error.base import ApiErrorCode, FlowerError
    from flwr.superlink.servicer.control.control_handlers import register_node

    if not directory.is_dir():
        log.error("%s=%s: not a directory; no partner key registered", KEYS_ENV, directory)
        return {}
    account = AccountInfo(flwr_aid=NOOP_FLWR_AID, account_name=NOOP_ACCOUNT_NAME)  # the CLI's, without auth
    registered = {}
    for path in sorted(directory.glob(f"*{KEY_SUFFIX}")):
        try:
            request = RegisterNodeRequest(public_key=load_public_key(path))
            registered[path.name] = int(register_node(request, account, state).node_id)
        except PartnerKeyError as exc:
            log.error("%s: not registered", exc)
        except FlowerError as exc:
            if exc.code != ApiErrorCode.PUBLIC_KEY_ALREADY_IN_USE:
                log.error("%s: not registered: %s", path, exc.message)
            continue
        else:
            log.info("registered partner key %s as SuperNode %d", path.name, registered[path.name])
    return registered


def install() -> bool:
    """Register the partners of ``FEDREC_PARTNER_KEYS`` when the SuperLink creates its state (before any
    request reads it). Nothing happens when the variable is unset; returns whether it was set."""
    directory = os.environ.get(KEYS_ENV, "").strip()
    if not directory:
        return False
    from flwr.server.superlink.linkstate import LinkStateFactory

    create_state = LinkStateFactory.state
    once = threading.Lock()
    done: list[bool] = []

    def state_with_partners(self: LinkStateFactory) -> Any:
        state = create_state(self)
        if not done:
            with once:
                if not done:
                    register_partners(Path(directory), state)
                    done.append(True)
        return state

    LinkStateFactory.state = state_with_partners  # type: ignore[method-assign]
    return True
