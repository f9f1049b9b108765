"""The run configuration: one typed, validated object for every setting.

Defaults live in exactly one place, ``[tool.flwr.app.config]`` of ``pyproject.toml`` (Flower merges them into
``context.run_config``). This module gives them types and ranges and validates a run's mapping once, at the
edge, with errors that name the key and what is allowed (the Opacus habit: fail early, say what to do).
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


class ConfigError(ValueError):
    """An invalid run setting; the message names the key."""


def _rule(*, choices: tuple[str, ...] = (), low: float | None = None, high: float | None = None,
          low_open: bool = False, high_open: bool = False) -> dict[str, Any]:
    return {"choices": choices, "low": low, "high": high, "low_open": low_open, "high_open": high_open}


@dataclass(frozen=True)
class RunConfig:
    """Every run setting; field ``num_rounds`` is the key ``num-rounds``. See pyproject.toml for defaults."""

    dataset: str
    partition: str = field(metadata=_rule(choices=("stores-file", "iid", "dirichlet", "one-user-per-client")))
    num_stores: int = field(metadata=_rule(low=1))
    dirichlet_alpha: float = field(metadata=_rule(low=0.0, low_open=True))
    seed: int
    eval_seed: int
    num_rounds: int = field(metadata=_rule(low=1))
    local_epochs: int = field(metadata=_rule(low=1))
    batch_size: int = field(metadata=_rule(low=1))
    learning_rate: float = field(metadata=_rule(low=0.0, low_open=True))
    num_negatives: int = field(metadata=_rule(low=1))
    gmf_dim: int = field(metadata=_rule(low=1))
    mlp_dim: int = field(metadata=_rule(low=1))
    mlp_layers: str
    item_tower: str = field(metadata=_rule(choices=("id", "text", "hybrid")))
    text_encoder: str
    cold_start_text_components: int = field(metadata=_rule(low=0))
    top_k: int = field(metadata=_rule(low=1))
    fold_evaluation: bool
    server_optimizer: str = field(metadata=_rule(choices=("sgd", "momentum", "adam")))
    server_learning_rate: float = field(metadata=_rule(low=0.0, low_open=True))
    server_momentum: float = field(metadata=_rule(low=0.0, high=1.0, high_open=True))
    server_adam_tau: float = field(metadata=_rule(low=0.0, low_open=True))
    accept_failures: bool
    run_dir: str
    state_dir: str
    torch_threads: int = field(metadata=_rule(low=1))
    device: str = field(metadata=_rule(choices=("auto", "cpu", "cuda")))
    privacy: str = field(metadata=_rule(choices=("user", "interaction", "none")))
    target_epsilon: float = field(metadata=_rule(low=0.0, low_open=True))
    delta: float = field(metadata=_rule(low=0.0, high=1.0, low_open=True, high_open=True))
    sigma_from_target: bool
    noise_multiplier: float = field(metadata=_rule(low=0.0))
    clipping_norm: float = field(metadata=_rule(low=0.0, low_open=True))
    user_sample_rate: float = field(metadata=_rule(low=0.0, high=1.0, low_open=True))
    user_local_steps: int = field(metadata=_rule(low=1))
    user_batch_size: int = field(metadata=_rule(low=1))
    user_learning_rate: float = field(metadata=_rule(low=0.0, low_open=True))
    user_embedding_learning_rate: float = field(metadata=_rule(low=0.0))
    user_dense_learning_rate: float = field(metadata=_rule(low=0.0, low_open=True))
    user_chunk_size: int = field(metadata=_rule(low=1))
    user_refresh_epochs: int = field(metadata=_rule(low=0))
    user_refresh_learning_rate: float = field(metadata=_rule(low=0.0, low_open=True))
    federated_parameters: str = field(metadata=_rule(choices=("all", "item-bias")))
    population: int = field(metadata=_rule(low=0))
    secure_rng: bool
    secagg: bool
    secagg_num_shares: int = field(metadata=_rule(low=3))
    secagg_reconstruction_threshold: int = field(metadata=_rule(low=2))
    secagg_clipping_range: float = field(metadata=_rule(low=0.0, low_open=True))
    secagg_quantization_range: int = field(metadata=_rule(low=2))
    noise_share_stores: int = field(metadata=_rule(low=1))

    @property
    def hidden_layers(self) -> tuple[int, ...]:
        return _parse_layers(self.mlp_layers)

    @property
    def learned_shared(self) -> str:
        """What the federation learns of the shared parameters: ``federated-parameters`` in user-level DP with
        the text tower; every parameter otherwise (the other modes do not noise each coordinate per shopper,
        and the other towers have no per-item bias or public item side to keep)."""
        return self.federated_parameters if self.privacy == "user" and self.item_tower == "text" else "all"

    def to_flower(self) -> dict[str, bool | int | float | str]:
        """The kebab-case mapping Flower carries as ``run_config``."""
        return {key_of(f.name): getattr(self, f.name) for f in dataclasses.fields(self)}

    def replace(self, **changes: Any) -> RunConfig:
        return validated(dataclasses.replace(self, **changes))


def key_of(field_name: str) -> str:
    return field_name.replace("_", "-")


def _parse_layers(text: str) -> tuple[int, ...]:
    try:
        layers = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise ConfigError(f"mlp-layers: expected comma-separated positive integers, got {text!r}") from exc
    if not layers or min(layers) < 1:
        raise ConfigError(f"mlp-layers: expected comma-separated positive integers, got {text!r}")
    return layers


def default_mapping(pyproject: Path = PYPROJECT) -> dict[str, Any]:
    """The defaults from ``[tool.flwr.app.config]``, the single place they are written."""
    with pyproject.open("rb") as fh:
        return dict(tomllib.load(fh)["tool"]["flwr"]["app"]["config"])


def from_mapping(values: Mapping[str, Any], *, base: Mapping[str, Any] | None = None) -> RunConfig:
    """Build a validated RunConfig from kebab-case ``values`` layered over ``base`` (default: pyproject)."""
    merged = dict(default_mapping() if base is None else base)
    known = {key_of(f.name) for f in dataclasses.fields(RunConfig)}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown config key {key!r}; known keys: {', '.join(sorted(known))}")
        merged[key] = value
    missing = known - merged.keys()
    if missing:
        raise ConfigError(f"missing config key(s): {', '.join(sorted(missing))}")
    kwargs = {f.name: _coerce(key_of(f.name), merged[key_of(f.name)], f.type)
              for f in dataclasses.fields(RunConfig)}
    return validated(RunConfig(**kwargs))


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    expected = {"int": int, "float": float, "bool": bool, "str": str}[str(annotation)]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {expected.__name__}, got {type(value).__name__} {value!r}")
    return value


def validated(config: RunConfig) -> RunConfig:
    """Check every field's rule and the cross-field constraints; return the config unchanged."""
    for f in dataclasses.fields(config):
        rule = f.metadata
        if not rule:
            continue
        value, key = getattr(config, f.name), key_of(f.name)
        if rule["choices"] and value not in rule["choices"]:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(rule['choices'])}")
        low, high = rule["low"], rule["high"]
        if low is not None and (value < low or (rule["low_open"] and value == low)):
            raise ConfigError(f"{key}: {value!r} must be {'>' if rule['low_open'] else '>='} {low}")
        if high is not None and (value > high or (rule["high_open"] and value == high)):
            raise ConfigError(f"{key}: {value!r} must be {'<' if rule['high_open'] else '<='} {high}")
    _parse_layers(config.mlp_layers)
    if config.secagg_reconstruction_threshold >= config.secagg_num_shares:
        raise ConfigError(
            f"secagg-reconstruction-threshold: {config.secagg_reconstruction_threshold} must be below "
            f"secagg-num-shares ({config.secagg_num_shares}) (Flower's SecAgg+ requires it)"
        )
    threshold = config.secagg_reconstruction_threshold
    if config.secagg and config.privacy == "user" and config.noise_share_stores > threshold:
        raise ConfigError(
            f"noise-share-stores: {config.noise_share_stores} exceeds secagg-reconstruction-threshold "
            f"({threshold}); a round that completes with only the threshold's stores would carry less than "
            "the configured noise"
        )
    return config


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as a dict; an unreadable or malformed file is a ConfigError naming it."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def load_toml_overrides(path: str | Path) -> dict[str, Any]:
    """Read a scenario file: a flat TOML table of kebab-case keys (``[config]`` table or top level)."""
    data = read_toml(path)
    table = data.get("config", data)
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [config] must be a table of key = value")
    return dict(table)


def parse_assignment(text: str) -> tuple[str, Any]:
    """Parse one ``--set key=value``; the value is read as a TOML value, or as a plain string."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip(), value
