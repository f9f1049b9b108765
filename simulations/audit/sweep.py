"""Run the audit's sweep points, one result file each, so an interrupted audit resumes where it stopped.

A point is finished when ``points/<point_id>.json`` exists and names the same run config; its run directory is
``points/<point_id>/run``. A point whose run directory exists without a result file was interrupted: its
directory is removed and the point is run again from round 0 (a half-finished run's stores may hold ledger
rounds the server never checkpointed, and the audit must not guess).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.atomic import write_json_atomic
from simulations.audit.accounting import audit_ledgers
from simulations.audit.config import AuditConfig, SweepPoint

Runner = Callable[[Any], dict[str, Any]]  # simulate(config) -> summary


def point_result_path(audit: AuditConfig, point: SweepPoint) -> Path:
    return audit.output_dir / "points" / f"{point.point_id}.json"


def finished_result(audit: AuditConfig, point: SweepPoint) -> dict[str, Any] | None:
    """The stored result of ``point`` if it was finished with the same run config, else None."""
    path = point_result_path(audit, point)
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if result.get("config") != _config_without_run_dir(point):
        return None
    return dict(result)


def _config_without_run_dir(point: SweepPoint) -> dict[str, Any]:
    values = dict(point.config.to_flower())
    values.pop("run-dir")
    return values


def run_point(
    audit: AuditConfig, point: SweepPoint, runner: Runner, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Simulate one point (unless finished), recompute its ε, run the attacks; write and return its result."""
    done = finished_result(audit, point)
    if done is not None:
        log(f"[audit] {point.point_id}: finished earlier, reusing {point_result_path(audit, point)}")
        return done
    run_dir = audit.output_dir / "points" / point.point_id / "run"
    if run_dir.exists():
        log(f"[audit] {point.point_id}: interrupted earlier; running it again from round 0")
        shutil.rmtree(run_dir)
    log(
        f"[audit] {point.point_id}: running {point.label}, SecAgg+ {'on' if point.secagg else 'off'}, "
        f"seed {point.seed}"
    )
    started = time.perf_counter()
    summary = runner(point.config.replace(run_dir=str(run_dir)))
    result: dict[str, Any] = {
        "point_id": point.point_id,
        "label": point.label,
        "epsilon_target": None
        if point.epsilon_target != point.epsilon_target
        else ("inf" if point.epsilon_target == float("inf") else point.epsilon_target),
        "secagg": point.secagg,
        "seed": point.seed,
        "client_level": point.client_level,
        "config": _config_without_run_dir(point),
        "run_dir": str(run_dir),
        "summary": summary,
        "metrics": json.loads((run_dir / "metrics.json").read_text()),
        "accounting": audit_ledgers(run_dir),
    }
    if audit.attacks:
        run_attacks(audit, point, result)
    result["seconds"] = round(time.perf_counter() - started, 2)
    write_json_atomic(point_result_path(audit, point), result)
    return result


def run_attacks(audit: AuditConfig, point: SweepPoint, result: dict[str, Any]) -> None:
    """Membership and item-set inference against the point's finished run (into ``result``)."""
    from simulations.audit.probes import item_set_inference, membership_inference

    run_dir = Path(result["run_dir"])
    result["mia"] = membership_inference(run_dir, point.config, audit.mia_users, point.seed)
    result["item_set"] = item_set_inference(run_dir, point.config, audit.item_set_clients, point.seed)


def redo_attacks(audit: AuditConfig, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Re-run the attacks (only) on every finished point, from its run directory; rewrite its result file.
    For an auditor who changed an attack: the simulations are not repeated."""
    results = []
    for point in audit.points:
        result = finished_result(audit, point)
        if result is None:
            continue
        log(f"[audit] {point.point_id}: re-running the attacks")
        run_attacks(audit, point, result)
        write_json_atomic(point_result_path(audit, point), result)
        results.append(result)
    return results


def run_sweep(audit: AuditConfig, runner: Runner, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Every point in order; a point that fails stops the audit (its result file is not written)."""
    return [run_point(audit, point, runner, log) for point in audit.points]
