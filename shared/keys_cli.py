"""``fedrec keys``: make the CA, the SuperLink certificate and partners' node-authentication keys.

Registered by ``simulations/cli.py`` (``OWNED_SUBCOMMANDS``); imports only ``cryptography`` (lazily), so
``fedrec --help`` stays fast. Subcommands:

- ``fedrec keys federation --out DIR --partner p1 --partner p2 ...``: everything a (demo) federation needs;
- ``fedrec keys ca --out DIR``; ``fedrec keys superlink --out DIR --san host ...``;
  ``fedrec keys superexec-secret --out DIR``: the central team's part;
- ``fedrec keys node --out DIR --name p4 [--force]``: a partner's key pair (new partner or key rotation).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_OUT = "deploy/secrets"
DEFAULT_PARTNERS = ("partner-1", "partner-2", "partner-3")


def _report(paths: list[Path]) -> None:
    for path in paths:
        print(path)


def _run(args: argparse.Namespace) -> int:
    from shared import keys

    names = getattr(args, "san", None) or list(keys.DEFAULT_SUPERLINK_NAMES)
    try:
        if args.what == "federation":
            partners = getattr(args, "partner", None) or list(DEFAULT_PARTNERS)
            _report(keys.create_federation(args.out, partners, names, args.force))
        elif args.what == "ca":
            _report([keys.create_ca(args.out, overwrite=args.force)])
        elif args.what == "superlink":
            _report([keys.create_superlink_certificate(args.out, names, overwrite=args.force)])
        elif args.what == "superexec-secret":
            _report([keys.create_superexec_secret(args.out, overwrite=args.force)])
        else:
            pair = keys.create_node_keys(args.out, args.name, overwrite=args.force)
            _report([pair.private_key, pair.public_key])
    except keys.KeyMaterialError as exc:
        print(f"fedrec keys: {exc}", file=sys.stderr)
        return 2
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_OUT),
                        help=f"directory of the key material (default: {DEFAULT_OUT})")
    parser.add_argument("--force", action="store_true", help="replace existing keys (rotation)")


def _san(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--san", action="append", metavar="HOST",
                        help="a DNS name or IP address partners use to reach the SuperLink (repeatable; "
                             "default: superlink, localhost, 127.0.0.1)")


def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``fedrec keys`` subcommands to ``parser``; each sets ``func(args) -> exit code``."""
    sub = parser.add_subparsers(dest="what", required=True)
    federation = sub.add_parser("federation", help="CA + SuperLink certificate + one key pair per partner")
    _common(federation)
    _san(federation)
    federation.add_argument("--partner", action="append", metavar="NAME",
                            help="a partner's name (repeatable; default: partner-1, partner-2, partner-3)")
    _common(sub.add_parser("ca", help="a new certificate authority (ca.crt, ca.key)"))
    superlink = sub.add_parser("superlink", help="the SuperLink's TLS certificate, signed by the CA in --out")
    _common(superlink)
    _san(superlink)
    _common(sub.add_parser("superexec-secret", help="the secret SuperLink and the ServerApp side share"))
    node = sub.add_parser("node", help="a partner's node-authentication key pair (OpenSSH EC keys)")
    _common(node)
    node.add_argument("--name", required=True,
                      help="the partner's name: writes nodes/NAME and nodes/NAME.pub")
    parser.set_defaults(func=_run)
