"""``fedrec audit --config simulations/configs/audit.toml``: validate the whole audit, run (or resume) its
sweep, and rebuild the report from the points' result files. Imports nothing heavy at top level, so
``fedrec --help`` stays fast."""

from __future__ import annotations

import argparse
import json
import sys
import time


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, help="an audit TOML (e.g. simulations/configs/audit-quick.toml)"
    )
    parser.add_argument("--output-dir", help="override audit.output-dir (the report directory)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="validate the audit config (keys, ε targets, budgets) and list its points; run nothing",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild the report from the finished points' result files; run nothing",
    )
    parser.add_argument(
        "--redo-attacks",
        action="store_true",
        help="re-run only the attacks on the finished points' run directories, then the report",
    )
    parser.set_defaults(func=run_audit)


def run_audit(args: argparse.Namespace) -> int:
    from server.app import check_secagg_config, checked_population
    from shared.workload import number_of_stores
    from simulations.audit.config import load_audit_config
    from simulations.audit.report import build_report
    from simulations.audit.sweep import finished_result, redo_attacks, run_sweep
    from simulations.simulate import SimulationFailed, simulate

    started = time.perf_counter()
    audit = load_audit_config(args.config, args.output_dir)
    for (
        point
    ) in audit.points:  # δ < 1/N, SecAgg+ shares and the dataset, for every point, before anything runs
        checked_population(point.config)
        check_secagg_config(point.config, number_of_stores(point.config))
    if args.check:
        for point in audit.points:
            state = "finished" if finished_result(audit, point) else "to run"
            print(f"{point.point_id}: {point.label}, SecAgg+ {'on' if point.secagg else 'off'} ({state})")
        return 0
    if args.report_only or args.redo_attacks:
        if args.redo_attacks:
            redo_attacks(audit)
        results = [r for r in (finished_result(audit, p) for p in audit.points) if r is not None]
        if not results:
            print("fedrec audit: no finished point to report", file=sys.stderr)
            return 1
    else:
        try:
            results = run_sweep(audit, simulate)
        except SimulationFailed as exc:
            print(
                f"fedrec audit: a point FAILED: {exc}; finished points are kept, re-run to resume",
                file=sys.stderr,
            )
            return 1
    report = build_report(audit, results, time.perf_counter() - started)
    print(f"[audit] report: {audit.output_dir / 'report.md'}", flush=True)
    line = {
        "benchmark": "audit",
        "audit": audit.name,
        "report_dir": str(audit.output_dir),
        "rows": [
            {
                k: row[k]
                for k in (
                    "setting",
                    "secagg",
                    "epsilon_rdp",
                    "hr@10",
                    "ndcg@10",
                    "hr@10_full",
                    "ndcg@10_full",
                )
            }
            | {k: v for k, v in row.items() if k.startswith("mia_") or k.endswith("_top_precision")}
            for row in report["utility_vs_epsilon"]
        ],
    }
    from simulations.audit.report import finite_json

    print(json.dumps(finite_json(line)))
    return 0
