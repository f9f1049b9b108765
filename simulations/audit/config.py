"""The audit configuration: an ``[audit]`` table (the sweep, seeds, attacks, budgets, output directory) plus a
``[config]`` table of run-config overrides shared by every point, validated as a whole before anything runs.

Refused before any simulation starts, with the key named: an unknown key (anywhere), an impossible ε target
(≤ 0, or one whose calibrated σ is beyond ``MAX_NOISE_MULTIPLIER`` or that Opacus cannot reach), a point whose
ε would pass the privacy budget ``max-epsilon``, and a sweep of more runs than the compute budget
``max-runs``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.config import ConfigError, RunConfig, from_mapping, read_toml

# σ above this buys nothing measurable on any dataset fedrec targets (the model learns only noise) and usually
# means a target ε the configured rounds and sampling rate cannot sensibly reach: refuse it instead.
MAX_NOISE_MULTIPLIER = 50.0
INFINITE = "inf"  # the non-private reference point (privacy = "none"); TOML spells it ``inf``
DEFAULT_OUTPUT_ROOT = Path("runs") / "audit"
TOP_LEVEL_TABLES = ("audit", "config")


@dataclass(frozen=True)
class SweepPoint:
    """One simulation of the sweep: a privacy setting on one seed, with its complete run config."""

    point_id: str
    label: str
    epsilon_target: float  # math.inf for the non-private reference; the projected ε for a σ point
    secagg: bool
    seed: int
    client_level: bool
    config: RunConfig


@dataclass(frozen=True)
class AuditConfig:
    """Everything ``fedrec audit`` needs; ``points`` are fully validated run configs."""

    name: str
    output_dir: Path
    seeds: tuple[int, ...]
    epsilons: tuple[float, ...]
    noise_multipliers: tuple[float, ...]
    secagg: tuple[bool, ...]
    client_level_epsilons: tuple[float, ...]
    attacks: bool
    mia_users: int
    item_set_clients: int
    max_runs: int
    max_epsilon: float
    run_overrides: dict[str, Any]
    point_overrides: dict[str, dict[str, Any]]
    source: dict[str, Any] = field(repr=False)
    points: tuple[SweepPoint, ...] = ()


def _table(raw: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{key}] must be a table")
    return dict(value)


def _list(audit: Mapping[str, Any], key: str, kind: type, default: list[Any]) -> list[Any]:
    value = audit.get(key, default)
    if not isinstance(value, list):
        raise ConfigError(f"audit.{key}: expected a list, got {value!r}")
    out = []
    for item in value:
        if kind is float and isinstance(item, int) and not isinstance(item, bool):
            item = float(item)
        if not isinstance(item, kind) or (kind is int and isinstance(item, bool)):
            raise ConfigError(f"audit.{key}: expected a list of {kind.__name__}, got {item!r}")
        out.append(item)
    return out


def _scalar(audit: Mapping[str, Any], key: str, kind: type, default: Any, low: float | None = None) -> Any:
    value: Any = audit.get(key, default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"audit.{key}: expected {kind.__name__}, got {value!r}")
    number: Any = value
    if low is not None and number < low:
        raise ConfigError(f"audit.{key}: {value!r} must be >= {low}")
    return value


AUDIT_KEYS = {
    "name",
    "output-dir",
    "seeds",
    "epsilons",
    "noise-multipliers",
    "secagg",
    "client-level-epsilons",
    "attacks",
    "mia-users",
    "item-set-clients",
    "max-runs",
    "max-epsilon",
    "overrides",
}


def load_audit_config(path: str | Path, output_dir: str | None = None) -> AuditConfig:
    """Read and validate an audit TOML (see simulations/configs/audit.toml); nothing runs here."""
    path = Path(path)
    return audit_config_from_mapping(read_toml(path), default_name=path.stem, output_dir=output_dir)


def audit_config_from_mapping(
    raw: Mapping[str, Any], default_name: str = "audit", output_dir: str | None = None
) -> AuditConfig:
    for key in raw:
        if key not in TOP_LEVEL_TABLES:
            raise ConfigError(f"unknown audit config key {key!r}; expected the tables [audit] and [config]")
    audit, run_overrides = _table(raw, "audit"), _table(raw, "config")
    for key in audit:
        if key not in AUDIT_KEYS:
            raise ConfigError(
                f"unknown audit config key 'audit.{key}'; known keys: {', '.join(sorted(AUDIT_KEYS))}"
            )
    base = from_mapping(run_overrides)  # unknown or invalid run keys fail here, naming the key
    name = _scalar(audit, "name", str, default_name)
    epsilons = _list(audit, "epsilons", float, [])
    sigmas = _list(audit, "noise-multipliers", float, [])
    client_level = _list(audit, "client-level-epsilons", float, [])
    if not epsilons and not sigmas and not client_level:
        raise ConfigError(
            "audit.epsilons: the sweep is empty (give epsilons, noise-multipliers or client-level-epsilons)"
        )
    for key, values in (("epsilons", epsilons), ("client-level-epsilons", client_level)):
        for eps in values:
            if not eps > 0:
                raise ConfigError(f"audit.{key}: ε target {eps!r} is impossible (must be > 0, or inf)")
    for sigma in sigmas:
        if not 0 < sigma <= MAX_NOISE_MULTIPLIER:
            raise ConfigError(f"audit.noise-multipliers: {sigma!r} must be in (0, {MAX_NOISE_MULTIPLIER}]")
    overrides = _table(audit, "overrides")
    point_overrides: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        if not isinstance(value, dict):
            raise ConfigError(f"audit.overrides.{key}: must be a table of run-config keys")
        if key != INFINITE and _as_float(key) is None:
            raise ConfigError(f'audit.overrides.{key}: key must be an ε of the sweep (e.g. "1") or "inf"')
        from_mapping({**run_overrides, **value})  # names an unknown key of the override table
        point_overrides[_point_key(float(key))] = dict(value)
    config = AuditConfig(
        name=name,
        output_dir=Path(output_dir or _scalar(audit, "output-dir", str, str(DEFAULT_OUTPUT_ROOT / name))),
        seeds=tuple(_list(audit, "seeds", int, [base.seed])) or (base.seed,),
        epsilons=tuple(epsilons),
        noise_multipliers=tuple(sigmas),
        secagg=tuple(_list(audit, "secagg", bool, [base.secagg])) or (base.secagg,),
        client_level_epsilons=tuple(client_level),
        attacks=_scalar(audit, "attacks", bool, True),
        mia_users=_scalar(audit, "mia-users", int, 943, low=1),
        item_set_clients=_scalar(audit, "item-set-clients", int, 50, low=1),
        max_runs=_scalar(audit, "max-runs", int, 40, low=1),
        max_epsilon=_scalar(audit, "max-epsilon", float, 8.0, low=0.0),
        run_overrides=dict(run_overrides),
        point_overrides=point_overrides,
        source={k: v for k, v in raw.items()},
    )
    if not config.max_epsilon > 0:
        raise ConfigError("audit.max-epsilon: must be > 0")
    runs = (
        len(config.epsilons) * len(config.secagg)
        + len(config.noise_multipliers) * len(config.secagg)
        + len(config.client_level_epsilons)
    ) * len(config.seeds)
    if runs > config.max_runs:
        raise ConfigError(
            f"audit.max-runs: the sweep needs {runs} runs (points × secagg × seeds) but the "
            f"budget is {config.max_runs}; shorten audit.epsilons/audit.seeds or raise max-runs"
        )
    return _with_points(config, base)


def _as_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _point_key(epsilon: float) -> str:
    return INFINITE if math.isinf(epsilon) else f"{epsilon:g}"


def _with_points(audit: AuditConfig, base: RunConfig) -> AuditConfig:
    """Expand the sweep into fully validated run configs; every ε target is calibrated here (and cached) so an
    impossible one is refused before anything runs."""
    from dataclasses import replace

    points: list[SweepPoint] = []
    for seed in audit.seeds:
        for secagg in audit.secagg:
            for eps in audit.epsilons:
                points.append(_point(audit, base, eps, None, secagg, seed, client_level=False))
            for sigma in audit.noise_multipliers:
                points.append(_point(audit, base, math.nan, sigma, secagg, seed, client_level=False))
        for eps in audit.client_level_epsilons:
            points.append(_point(audit, base, eps, None, True, seed, client_level=True))
    return replace(audit, points=tuple(points))


def _point(
    audit: AuditConfig,
    base: RunConfig,
    eps: float,
    sigma: float | None,
    secagg: bool,
    seed: int,
    client_level: bool,
) -> SweepPoint:
    from shared.ledger import PrivacyLedger
    from shared.privacy import federation_noise_multiplier

    key = "epsilons" if not client_level else "client-level-epsilons"
    values: dict[str, Any] = {**audit.run_overrides, "seed": seed, "secagg": secagg}
    if client_level:
        # Flower's SecAgg+ ring needs an odd share count when there are more clients than shares
        shares = int(values.get("secagg-num-shares", base.secagg_num_shares))
        values.update({"partition": "one-user-per-client", "secagg-num-shares": shares | 1})
    if sigma is not None:
        values.update(
            {
                "privacy": "user",
                "sigma-from-target": False,
                "noise-multiplier": sigma,
                "target-epsilon": audit.max_epsilon,
            }
        )
        label = f"σ={sigma:g}"
    elif math.isinf(eps):
        values.update({"privacy": "none"})
        label = "no DP (ε=∞)"
    else:
        values.update({"privacy": "user", "sigma-from-target": True, "target-epsilon": eps})
        label = f"ε={eps:g}"
    if not math.isnan(eps):
        values.update(audit.point_overrides.get(_point_key(eps), {}))
    config = from_mapping(values)
    if config.privacy == "user":
        try:
            noise = federation_noise_multiplier(config)
        except Exception as exc:  # Opacus raises ValueError("The privacy budget is too low.") and the like
            raise ConfigError(
                f"audit.{key}: ε target {eps:g} is impossible at q={config.user_sample_rate}, "
                f"{config.num_rounds} rounds, δ={config.delta} ({exc})"
            ) from exc
        if noise > MAX_NOISE_MULTIPLIER:
            raise ConfigError(
                f"audit.{key}: ε target {eps:g} needs σ={noise:.1f} > {MAX_NOISE_MULTIPLIER} "
                f"at q={config.user_sample_rate}, {config.num_rounds} rounds: impossible in practice"
            )
        if sigma is not None:
            ledger = PrivacyLedger(config.delta)
            for round_ in range(config.num_rounds):
                ledger.record(round_ + 1, sigma, config.user_sample_rate, 1)
            eps = ledger.epsilon()
            if eps > audit.max_epsilon:
                raise ConfigError(
                    f"audit.noise-multipliers: σ={sigma:g} over {config.num_rounds} rounds spends "
                    f"ε={eps:.2f} > audit.max-epsilon {audit.max_epsilon:g}"
                )
        elif eps > audit.max_epsilon:
            raise ConfigError(
                f"audit.{key}: ε target {eps:g} exceeds the privacy budget audit.max-epsilon "
                f"{audit.max_epsilon:g}"
            )
    mode = "client-level" if client_level else ("secagg" if secagg else "plain")
    tag = "inf" if math.isinf(eps) else (f"sigma{sigma:g}" if sigma is not None else f"eps{eps:g}")
    return SweepPoint(
        point_id=f"{tag}-{mode}-seed{seed}",
        label=label,
        epsilon_target=eps,
        secagg=secagg,
        seed=seed,
        client_level=client_level,
        config=config,
    )
