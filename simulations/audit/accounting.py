"""ε recomputed by the auditor from the ledgers a run left, independently of the code that reported it.

Inputs are only the (σ, q, steps) histories in ``run_dir/ledger.json`` (the federation's and what every store
reported per round) and each store's own ``stores/store-<k>/ledger.json``. For every client and every round
the cumulative ε is recomputed from scratch with Opacus' RDP analysis (``compute_rdp`` summed over the whole
history, then ``get_privacy_spent`` — exactly ``RDPAccountant.get_epsilon``, with no merging of entries) and
with Opacus' PRV accountant, then compared with the ε the client reported. A fresh accountant per round (the
common under-report) would fail this check from round 2 on.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis

RELATIVE_TOLERANCE = 1e-6  # reported vs recomputed RDP ε: the same analysis, so only float round-off differs
History = tuple[tuple[float, float, int], ...]


@functools.lru_cache(maxsize=1024)
def _rdp_one(sigma: float, q: float, steps: int) -> np.ndarray:
    return np.asarray(
        rdp_analysis.compute_rdp(
            q=q, noise_multiplier=sigma, steps=steps, orders=RDPAccountant.DEFAULT_ALPHAS
        )
    )


@functools.lru_cache(maxsize=4096)
def rdp_epsilon(history: History, delta: float) -> float:
    """RDP ε of the whole history (each entry composed separately, as ``RDPAccountant`` does)."""
    noisy = [h for h in history if h[2] > 0]
    if not noisy:
        return 0.0
    if any(sigma <= 0 for sigma, _, _ in noisy):
        return math.inf
    total = sum(_rdp_one(*h) for h in noisy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eps, _ = rdp_analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=total, delta=delta)
    return float(eps)


@functools.lru_cache(maxsize=4096)
def prv_epsilon(history: History, delta: float) -> float | None:
    """PRV ε of the whole history (Gopi et al., NeurIPS 2021; Opacus' PRVAccountant); None where it fails."""
    noisy = [h for h in history if h[2] > 0]
    if not noisy:
        return 0.0
    if any(sigma <= 0 for sigma, _, _ in noisy):
        return math.inf
    accountant = PRVAccountant()
    accountant.history = list(noisy)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(accountant.get_epsilon(delta=delta))
    except Exception:  # PRV's domain bounds can fail at extreme (σ, q); RDP is the reference anyway
        return None


def cumulative(entries: list[dict[str, Any]], delta: float) -> list[dict[str, Any]]:
    """Per round: the recomputed cumulative RDP ε beside the ε the client reported (if any); the PRV ε at the
    last round only (one PRV evaluation costs seconds; it is reported beside RDP, the accountant the budget
    check uses)."""
    out, history = [], []
    ordered = sorted(entries, key=lambda e: int(e["round"]))
    for i, entry in enumerate(ordered):
        history.append((float(entry["noise_multiplier"]), float(entry["sample_rate"]), int(entry["steps"])))
        frozen = tuple(history)
        out.append(
            {
                "round": int(entry["round"]),
                "reported": entry.get("epsilon"),
                "rdp": rdp_epsilon(frozen, delta),
                "prv": prv_epsilon(frozen, delta) if i == len(ordered) - 1 else None,
            }
        )
    return out


def _agrees(reported: float | None, recomputed: float) -> bool:
    if reported is None:
        return True
    if math.isinf(recomputed) or math.isinf(reported):
        return math.isinf(recomputed) and math.isinf(reported)
    return abs(reported - recomputed) <= RELATIVE_TOLERANCE * max(1.0, abs(recomputed))


def audit_ledgers(run_dir: Path) -> dict[str, Any]:
    """Recompute every client's ε in a run directory and check it against what was reported.

    Returns the federation's and each store's per-round series, the largest |reported − recomputed|, whether
    every store's own ledger file matches what it reported to the server, and the stores that stopped early
    (their ledgers end before the run's last round: stopped by their budget or failed).
    """
    ledger = json.loads((run_dir / "ledger.json").read_text())
    delta = float(ledger["delta"])
    federation = cumulative(ledger.get("federation", []), delta)
    stores: dict[str, list[dict[str, Any]]] = {}
    own_files_match: dict[str, bool] = {}
    for store, entries in sorted(ledger.get("stores", {}).items(), key=lambda kv: int(kv[0])):
        noisy = [e for e in entries if int(e.get("steps", 0)) > 0 or e.get("noise_multiplier", 0) > 0]
        stores[store] = cumulative(noisy, delta) if noisy else []
        own = run_dir / "stores" / f"store-{store}" / "ledger.json"
        if own.exists():
            own_entries = json.loads(own.read_text())["entries"]
            reported = [(e["round"], e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in noisy]
            kept = [(e["round"], e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in own_entries]
            own_files_match[store] = reported == kept
    series = [*federation, *(e for s in stores.values() for e in s)]
    mismatches = [e for e in series if not _agrees(e["reported"], e["rdp"])]
    gaps = [
        abs(float(e["reported"]) - e["rdp"])
        for e in series
        if e["reported"] is not None and math.isfinite(e["rdp"]) and math.isfinite(float(e["reported"]))
    ]
    last_round = max(
        (e["round"] for e in federation),
        default=max((e["round"] for s in stores.values() for e in s), default=0),
    )
    stopped = sorted(
        (s for s, entries in stores.items() if entries and entries[-1]["round"] < last_round), key=int
    )
    return {
        "delta": delta,
        "federation": federation,
        "stores": stores,
        "max_abs_difference": max(gaps, default=0.0),
        "mismatches": len(mismatches),
        "consistent": not mismatches and all(own_files_match.values()),
        "store_files_match": own_files_match,
        "stopped_stores": stopped,
        "final_rdp": federation[-1]["rdp"] if federation else _worst(stores, "rdp"),
        "final_prv": federation[-1]["prv"] if federation else _worst(stores, "prv"),
    }


def _worst(stores: dict[str, list[dict[str, Any]]], key: str) -> float | None:
    """Record-level mode has no federation ledger: stores hold disjoint records, so ε is the worst store's."""
    values = [s[-1][key] for s in stores.values() if s and s[-1][key] is not None]
    return max(values) if values else None
