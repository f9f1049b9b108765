"""The audit report, rebuilt from the points' result files: ``report.json`` (every number, the exact configs,
versions, seeds), ``report.md`` (tables an auditor can hand on) and PNG plots (matplotlib, Agg backend).
"""

from __future__ import annotations

import datetime as dt
import math
import platform
import statistics
import subprocess
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from shared.atomic import write_atomic, write_json_atomic
from simulations.audit.config import AuditConfig

METRICS = ("hr@10", "ndcg@10", "hr@10_full", "ndcg@10_full")
PLOTS = {
    "utility": "utility_vs_epsilon.png",
    "epsilon": "epsilon_per_client_per_round.png",
    "rounds": "hr10_per_round.png",
    "attacks": "attacks_vs_epsilon.png",
}
PACKAGES = ("torch", "flwr", "opacus", "numpy", "matplotlib")
INF_LABEL = "∞"


def versions() -> dict[str, str]:
    """Package versions, Python, and fedrec's git commit (with ``-dirty`` when the tree has changes)."""
    out = {name: _version(name) for name in PACKAGES}
    out["python"] = platform.python_version()
    try:
        root = Path(__file__).resolve().parents[2]
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        out["fedrec_commit"] = commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        out["fedrec_commit"] = "unknown"
    return out


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def finite_json(value: Any) -> Any:
    """Strict JSON: ∞ as the string "inf", NaN as null (json.dumps would write Infinity/NaN)."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return "inf" if math.isinf(value) else value
    if isinstance(value, dict):
        return {str(k): finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return value


def _eps_value(result: dict[str, Any]) -> float:
    """The ε a point actually spent (RDP, recomputed); ∞ for the non-private point."""
    final = result["accounting"]["final_rdp"]
    return math.inf if final is None or final == "inf" else float(final)


def _groups(results: list[dict[str, Any]]) -> dict[tuple[str, bool, bool], list[dict[str, Any]]]:
    """Results by (setting label, SecAgg+, client-level), over seeds."""
    groups: dict[tuple[str, bool, bool], list[dict[str, Any]]] = {}
    for result in results:
        groups.setdefault((result["label"], result["secagg"], result["client_level"]), []).append(result)
    return groups


def utility_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The utility-vs-ε table: mean (and min/max over seeds) of each metric per setting."""
    rows = []
    for (label, secagg, client_level), group in _groups(results).items():
        row: dict[str, Any] = {
            "setting": label,
            "secagg": secagg,
            "client_level": client_level,
            "seeds": [r["seed"] for r in group],
            "epsilon_rdp": max(_eps_value(r) for r in group),
            "epsilon_prv": _max_or_none(r["accounting"]["final_prv"] for r in group),
            "status": sorted({r["summary"]["status"] for r in group}),
        }
        for metric in METRICS:
            values = [float(r["summary"][metric]) for r in group]
            row[metric] = statistics.mean(values)
            row[f"{metric}_range"] = [min(values), max(values)]
        if all("mia" in r for r in group):
            for key in ("auc_released", "auc_personalized", "auc_popularity_reference"):
                row[f"mia_{key}"] = statistics.mean(r["mia"][key] for r in group)
            for view in ("plain", "dp", "secagg_masked", "secagg_sum"):
                for key in ("precision", "recall", "top_precision", "chance", "auc"):
                    row[f"itemset_{view}_{key}"] = statistics.mean(r["item_set"][view][key] for r in group)
        rows.append(row)
    return sorted(rows, key=lambda r: (r["client_level"], not r["secagg"], r["epsilon_rdp"]))


def _max_or_none(values: Iterable[Any]) -> float | None:
    numbers = [math.inf if v == "inf" else float(v) for v in values if v is not None]
    return max(numbers) if numbers else None


def _fmt_eps(value: float | None) -> str:
    if value is None:
        return "-"
    return INF_LABEL if math.isinf(value) else f"{value:.3f}"


def build_report(audit: AuditConfig, results: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """Write report.json, report.md and the plots into ``audit.output_dir``; return the report dict."""
    out = audit.output_dir
    out.mkdir(parents=True, exist_ok=True)
    rows = utility_rows(results)
    plots = _plots(out, results, rows)
    report = {
        "audit": audit.name,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "seeds": list(audit.seeds),
        "versions": versions(),
        "audit_config": audit.source,
        "points": [{"point_id": p.point_id, "config": p.config.to_flower()} for p in audit.points],
        "utility_vs_epsilon": rows,
        "accounting": {r["point_id"]: r["accounting"] for r in results},
        "attacks": {r["point_id"]: {"mia": r.get("mia"), "item_set": r.get("item_set")} for r in results},
        "results": results,
        "plots": plots,
        "seconds": round(seconds, 1),
    }
    write_json_atomic(out / "report.json", finite_json(report))
    text = render_markdown(audit, report, rows, results)
    write_atomic(out / "report.md", lambda fh: fh.write(text.encode("utf-8")))
    return report


def render_markdown(
    audit: AuditConfig, report: dict[str, Any], rows: list[dict[str, Any]], results: list[dict[str, Any]]
) -> str:
    lines = [
        f"# fedrec privacy audit: {audit.name}",
        "",
        f"Created {report['created']} · seeds {list(audit.seeds)} · fedrec "
        f"{report['versions']['fedrec_commit']}"
        f" · torch {report['versions']['torch']} · flwr {report['versions']['flwr']} · opacus "
        f"{report['versions']['opacus']}. Every number below is in `report.json`; each point's run "
        "directory (ledgers, metrics, model) is under `points/`. How to read this report: `docs/audit.md`.",
        "",
        "## 1. Utility vs ε",
        "",
        "ε = the federation's user-level ε at δ, recomputed from its ledger (RDP; PRV beside it). "
        "HR/NDCG@10 on the test item, sampled (99 negatives) and full ranking (PROTOCOL.md); mean over "
        "seeds.",
        "",
        "| setting | SecAgg+ | ε (RDP) | ε (PRV) | HR@10 | NDCG@10 | HR@10 full | NDCG@10 full | status |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        name = row["setting"] + (" (client-level, one user per client)" if row["client_level"] else "")
        lines.append(
            f"| {name} | {'on' if row['secagg'] else 'off'} | {_fmt_eps(row['epsilon_rdp'])} | "
            f"{_fmt_eps(row['epsilon_prv'])} | "
            + " | ".join(f"{row[m]:.4f}" for m in METRICS)
            + f" | {', '.join(row['status'])} |"
        )
    lines += [
        "",
        f"![utility vs ε]({PLOTS['utility']})",
        "",
        f"![HR@10 per round]({PLOTS['rounds']})",
        "",
        "## 2. ε accounting (recomputed from every client's ledger)",
        "",
        "For every client (store) and round, ε is recomputed from the ledger's (σ, q, steps) history "
        "alone with Opacus' RDP analysis over the *whole* history, and with the PRV accountant, then "
        "compared with the ε the client reported. `consistent` = every reported value matches (relative "
        "1e-6) and every store's own ledger file holds the same entries it reported.",
        "",
        "| point | clients | rounds | reported ε | recomputed RDP | PRV | max abs diff | consistent | "
        "stopped stores |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        acc = result["accounting"]
        fed = acc["federation"]
        reported = fed[-1]["reported"] if fed else None
        lines.append(
            f"| {result['point_id']} | {len(acc['stores']) or result['summary'].get('clients')} | "
            f"{result['summary']['rounds']} | {_fmt_eps(None if reported is None else float(reported))} | "
            f"{_fmt_eps(_num(acc['final_rdp']))} | {_fmt_eps(_num(acc['final_prv']))} | "
            f"{acc['max_abs_difference']:.2e} | {acc['consistent']} | "
            f"{', '.join(acc['stopped_stores']) or 'none'} |"
        )
    lines += ["", f"![ε per client per round]({PLOTS['epsilon']})", ""]
    if any("mia" in r for r in results):
        lines += _attack_sections(rows)
    lines += [
        "## 5. Honest limits",
        "",
        "- ε bounds what leaves the stores (the shared model); user embeddings train without noise at the "
        "store (joint DP), so the personalized-model MIA is *not* bounded by ε.",
        "- Every point reproduces bit for bit from its seed, SecAgg+ points included (its stochastic "
        "rounding is drawn from the run seed unless secure-rng is set).",
        "- Hyperparameters were tuned on the validation item (docs/privacy.md); that tuning is not in ε.",
        "",
    ]
    return "\n".join(lines)


def _num(value: Any) -> float | None:
    if value is None:
        return None
    return math.inf if value == "inf" else float(value)


def _attack_sections(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## 3. Membership inference (score threshold, no shadow models)",
        "",
        "Members: one train interaction per user; non-members: for each member, the item nearest in train "
        "popularity that the user never interacted with (train, validation or test), so popularity alone "
        "gives AUC ≈ 0.5 (the popularity reference column checks that). AUC 0.5 = chance. "
        "**Released model** = the shared parameters that left the stores, scored without any user "
        "embedding (the attacker has none): this is what ε bounds. **Personalized** = released model + the "
        "store's own user embeddings (trained without noise at the store): *not* bounded by ε — whoever "
        "holds them holds the store's data anyway.",
        "",
        "| setting | SecAgg+ | ε (RDP) | AUC released model | AUC personalized (at the store) | "
        "AUC popularity reference |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "mia_auc_released" in row:
            lines.append(
                f"| {row['setting']} | {'on' if row['secagg'] else 'off'} | "
                f"{_fmt_eps(row['epsilon_rdp'])} | {row['mia_auc_released']:.3f} | "
                f"{row['mia_auc_personalized']:.3f} | {row['mia_auc_popularity_reference']:.3f} |"
            )
    lines += [
        "",
        "## 4. Item-set inference from one client's update",
        "",
        "A one-user client's update of the shared parameters from the run's final model; the attacker "
        "guesses the user's train items as the items whose per-item row moved up (precision P, recall "
        "R), or the |set| items that moved most (top-P = top-R), against chance (the set's share of the "
        "catalog). Views: plain FedAvg (no clipping, no noise); DP without SecAgg+ (clipped, noise σC); "
        "SecAgg+ masked vector of one client (what the server receives); SecAgg+ sum over all audited "
        "clients (what the server unmasks), attacked per client.",
        "",
        "| setting | ε (RDP) | view | P | R | top-P | chance | AUC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "itemset_plain_precision" not in row:
            continue
        for view in ("plain", "dp", "secagg_masked", "secagg_sum"):
            p = f"itemset_{view}_"
            lines.append(
                f"| {row['setting']}{'' if row['secagg'] else ' (SecAgg+ off)'} | "
                f"{_fmt_eps(row['epsilon_rdp'])} | {view} | {row[p + 'precision']:.3f} | "
                f"{row[p + 'recall']:.3f} | {row[p + 'top_precision']:.3f} | {row[p + 'chance']:.3f} | "
                f"{row[p + 'auc']:.3f} |"
            )
    lines += ["", f"![attacks vs ε]({PLOTS['attacks']})", ""]
    return lines


# -- plots ------------------------------------------------------------------------------------------


def _plot_x(eps: float, finite_max: float) -> float:
    """Where ∞ sits on the log axis: one decade-ish to the right of the largest finite ε."""
    return eps if math.isfinite(eps) else finite_max * 2.5


def _plots(out: Path, results: list[dict[str, Any]], rows: list[dict[str, Any]]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    finite = [r["epsilon_rdp"] for r in rows if math.isfinite(r["epsilon_rdp"])] or [1.0]
    top = max(finite)

    def axis_eps(ax: Any) -> None:
        ax.set_xscale("log")
        ticks = sorted({*(round(e, 2) for e in finite), _plot_x(math.inf, top)})
        ax.set_xticks(ticks)
        ax.set_xticklabels([INF_LABEL if t == _plot_x(math.inf, top) else f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("ε (user level, δ per config; RDP, recomputed)")
        ax.grid(alpha=0.3)

    # 1. utility vs ε
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for (secagg, client_level), style in (
        ((True, False), "o-"),
        ((False, False), "s--"),
        ((True, True), "^:"),
    ):
        chosen = [r for r in rows if r["secagg"] == secagg and r["client_level"] == client_level]
        if not chosen:
            continue
        xs = [_plot_x(r["epsilon_rdp"], top) for r in chosen]
        name = "client-level" if client_level else ("SecAgg+ on" if secagg else "SecAgg+ off")
        for ax, (metric, pretty) in zip(
            axes, (("hr@10", "HR@10 (sampled)"), ("hr@10_full", "HR@10 (full)")), strict=True
        ):
            ys = [r[metric] for r in chosen]
            err = [
                [r[metric] - r[f"{metric}_range"][0] for r in chosen],
                [r[f"{metric}_range"][1] - r[metric] for r in chosen],
            ]
            ax.errorbar(xs, ys, yerr=err, fmt=style, capsize=3, label=name)
            ax.set_ylabel(pretty)
    for ax in axes:
        axis_eps(ax)
        ax.legend()
    fig.suptitle("Utility vs ε (test item; bars = min/max over seeds; ∞ = no DP)")
    fig.tight_layout()
    fig.savefig(out / PLOTS["utility"], dpi=110)
    plt.close(fig)

    # 2. ε per client per round
    fig, ax = plt.subplots(figsize=(8, 4.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    private = [r for r in results if r["accounting"]["federation"] or r["accounting"]["stores"]]
    for i, result in enumerate(private):
        color = colors[i % len(colors)]
        acc = result["accounting"]
        for series in acc["stores"].values():
            ax.plot([e["round"] for e in series], [e["rdp"] for e in series], color=color, alpha=0.25, lw=3)
        fed = acc["federation"]
        if fed:
            ax.plot(
                [e["round"] for e in fed],
                [e["rdp"] for e in fed],
                color=color,
                marker="o",
                ms=3,
                label=f"{result['point_id']} RDP",
            )
            prv = [(e["round"], e["prv"]) for e in fed if e["prv"] is not None]
            if prv:
                ax.plot(*zip(*prv, strict=True), color=color, ls="none", marker="D", ms=6, mfc="none")
            reported = [(e["round"], float(e["reported"])) for e in fed if e["reported"] is not None]
            ax.plot(*zip(*reported, strict=True), color="black", ls="none", marker="x", ms=4)
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("cumulative ε (δ per config)")
    ax.set_title(
        "ε per client per round: thick pale = each store (recomputed RDP), solid = federation RDP,\n"
        "◇ = PRV at the last round, × = ε the run reported",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / PLOTS["epsilon"], dpi=110)
    plt.close(fig)

    # 3. HR@10 per round
    fig, ax = plt.subplots(figsize=(8, 4.6))
    for i, result in enumerate(results):
        evaluated = [m for m in result["metrics"] if "test/hr@10" in m]
        ax.plot(
            [m["round"] for m in evaluated],
            [m["test/hr@10"] for m in evaluated],
            color=colors[i % len(colors)],
            marker="o",
            ms=3,
            label=result["point_id"],
        )
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("HR@10 (sampled, test item)")
    ax.set_title("HR@10 per round, every point")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / PLOTS["rounds"], dpi=110)
    plt.close(fig)

    # 4. attacks vs ε
    attacked = [r for r in rows if "mia_auc_released" in r and not r["client_level"]]
    if attacked:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for secagg, style in ((True, "-"), (False, "--")):
            chosen = [r for r in attacked if r["secagg"] == secagg]
            if not chosen:
                continue
            xs = [_plot_x(r["epsilon_rdp"], top) for r in chosen]
            tag = "" if secagg else " (SecAgg+ off)"
            axes[0].plot(
                xs, [r["mia_auc_released"] for r in chosen], "o" + style, label="released model" + tag
            )
            axes[0].plot(
                xs,
                [r["mia_auc_personalized"] for r in chosen],
                "s" + style,
                label="personalized, at the store (not bounded by ε)" + tag,
            )
            for view, marker in (("plain", "o"), ("dp", "s"), ("secagg_masked", "^"), ("secagg_sum", "v")):
                axes[1].plot(
                    xs, [r[f"itemset_{view}_top_precision"] for r in chosen], marker + style, label=view + tag
                )
            axes[1].plot(xs, [r["itemset_plain_chance"] for r in chosen], "k:", label="chance" + tag)
        axes[0].axhline(0.5, color="grey", lw=1)
        axes[0].axhline(0.55, color="red", lw=1, ls=":", label="0.55")
        axes[0].set_ylabel("membership-inference AUC")
        axes[0].set_title("Membership inference (0.5 = chance)", fontsize=10)
        axes[1].set_ylabel("item-set inference precision (top-|set|)")
        axes[1].set_title("Item-set inference from one client's update", fontsize=10)
        for ax in axes:
            axis_eps(ax)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / PLOTS["attacks"], dpi=110)
        plt.close(fig)
    return {k: v for k, v in PLOTS.items() if (out / v).exists()}
