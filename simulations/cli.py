"""The ``fedrec`` command. Subcommands are imported lazily from the side that owns them, so the CLI adds no
cross-side import (and ``fedrec --help`` does not import torch)."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any

from shared.config import ConfigError, RunConfig, from_mapping, load_toml_overrides, parse_assignment

DEFAULT_CENTRALIZED_EPOCHS = 20

# Subcommands owned by other sides: name -> (module, help). Each module exposes
# ``configure(parser: argparse.ArgumentParser) -> None`` that adds its arguments and sets ``func``; the module
# must import nothing heavy at top level (torch, flwr), so ``fedrec --help`` stays fast.
OWNED_SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("client.serving.cli", "partner side: the personalized recommendation gRPC service"),
    "keys": ("shared.keys_cli", "generate the CA, SuperLink certificate and node-authentication keys"),
    "audit": ("simulations.audit.cli", "privacy audit: utility-vs-ε sweep, ε recomputation, attacks, report"),
}


def load_config(args: argparse.Namespace) -> RunConfig:
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(load_toml_overrides(args.config))
    for assignment in getattr(args, "set", None) or []:
        key, value = parse_assignment(assignment)
        values[key] = value
    return from_mapping(values)


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a scenario TOML (e.g. simulations/configs/quick.toml)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override one setting (repeatable)")


def cmd_simulate(args: argparse.Namespace) -> int:
    from simulations.simulate import SimulationFailed, simulate

    config = load_config(args)
    try:
        summary = simulate(config, verbose=args.verbose)
    except SimulationFailed as exc:
        print(f"fedrec simulate: FAILED: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


def cmd_centralized(args: argparse.Namespace) -> int:
    from simulations.centralized import item_popularity, train_centralized

    config = load_config(args)
    if args.model == "itempop":
        result = item_popularity(config)
    else:
        result = train_centralized(config, args.epochs)
        result.pop("curve")
    print(json.dumps(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedrec",
                                     description="Federated, privacy-preserving recommendation")
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("simulate", help="run the federated main job on Flower's Simulation Engine")
    _add_config_args(sim)
    sim.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")
    sim.set_defaults(func=cmd_simulate)
    cen = sub.add_parser("centralized", help="the centralized baseline on the same split and metrics")
    _add_config_args(cen)
    cen.add_argument("--epochs", type=int, default=DEFAULT_CENTRALIZED_EPOCHS)
    cen.add_argument("--model", choices=("neumf", "itempop"), default="neumf")
    cen.set_defaults(func=cmd_centralized)
    for name, (module, help_text) in OWNED_SUBCOMMANDS.items():
        importlib.import_module(module).configure(sub.add_parser(name, help=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"fedrec: invalid configuration: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
