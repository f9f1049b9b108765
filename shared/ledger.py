"""The privacy ledger: the whole (σ, q, steps) history of a store or of the federation, and its ε.

Why a history and not a running ε: privacy composes over a store's whole life, and only an accountant fed the
entire history gives the tight value. A fresh accountant per round under-reports (it only ever sees one
round); adding per-round ε over-reports. The ledger stores the history, rebuilds an Opacus accountant from it
whenever ε is asked for, and is saved as JSON so anyone can recompute ε (``ledger.json``). A ledger that does
not parse is an error, never a silent reset to zero.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import opacus
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis

from shared.atomic import write_atomic
from shared.datasets import data_root

ACCOUNTANTS = {"rdp": RDPAccountant, "prv": PRVAccountant}
RDP_CACHE_DIR = "rdp-cache"


class LedgerError(ValueError):
    """A ledger file that cannot be trusted (unparseable or inconsistent)."""


@dataclass
class LedgerEntry:
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int

    def as_dict(self) -> dict[str, Any]:
        return {"round": self.round, "noise_multiplier": self.noise_multiplier,
                "sample_rate": self.sample_rate, "steps": self.steps}


@dataclass
class PrivacyLedger:
    delta: float
    entries: list[LedgerEntry] = field(default_factory=list)

    def epsilon(self, accountant: str = "rdp") -> float:
        """ε at ``delta`` of the whole history with one Opacus accountant (0 for an empty history)."""
        return epsilon_of(self.entries, self.delta, accountant)

    def projected_epsilon(self, noise_multiplier: float, sample_rate: float, steps: int,
                          accountant: str = "rdp") -> float:
        """ε the history would reach after one more round — computed on a copy, nothing is recorded."""
        extra = LedgerEntry(-1, noise_multiplier, sample_rate, steps)
        return epsilon_of([*copy.deepcopy(self.entries), extra], self.delta, accountant)

    def record(self, round_: int, noise_multiplier: float, sample_rate: float, steps: int) -> None:
        if any(e.round == round_ for e in self.entries):
            raise LedgerError(f"round {round_} is already in the ledger; refusing to count it twice")
        self.entries.append(LedgerEntry(round_, noise_multiplier, sample_rate, steps))

    @property
    def rounds(self) -> list[int]:
        return [e.round for e in self.entries]

    def to_json(self) -> dict[str, Any]:
        return {"delta": self.delta, "entries": [e.as_dict() for e in self.entries]}

    @classmethod
    def from_json(cls, payload: Any, source: str = "ledger") -> PrivacyLedger:
        try:
            entries = [LedgerEntry(int(e["round"]), float(e["noise_multiplier"]), float(e["sample_rate"]),
                                   int(e["steps"])) for e in payload["entries"]]
            return cls(delta=float(payload["delta"]), entries=entries)
        except (KeyError, TypeError, ValueError) as exc:
            raise LedgerError(f"{source}: not a valid privacy ledger ({exc!r})") from exc

    @classmethod
    def load(cls, path: str | Path) -> PrivacyLedger:
        path = Path(path)
        try:
            payload = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise LedgerError(f"{path}: cannot read the privacy ledger ({exc}); refusing to start from zero"
                              ) from exc
        return cls.from_json(payload, str(path))


def epsilon_of(entries: list[LedgerEntry], delta: float, accountant: str = "rdp") -> float:
    noisy = [e for e in entries if e.steps > 0]
    if not noisy:
        return 0.0
    if any(e.noise_multiplier <= 0 for e in noisy):
        return float("inf")
    history = merged_history(noisy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RDP's "optimal order is the largest alpha" is harmless here
        if accountant == "rdp":
            return _rdp_epsilon(history, delta)
        acc = ACCOUNTANTS[accountant]()
        acc.history = history
        return float(acc.get_epsilon(delta=delta))


def _rdp_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """What ``RDPAccountant.get_epsilon`` computes — Σ steps·RDP(σ, q) over its orders, then the conversion —
    with RDP(σ, q) of one step cached per process: RDP is linear in the steps, and evaluating it costs ~0.5 s,
    which every store and the server would otherwise pay several times per round."""
    orders = RDPAccountant.DEFAULT_ALPHAS
    total = sum(steps * _rdp_per_step(sigma, q) for sigma, q, steps in history)
    eps, _ = rdp_analysis.get_privacy_spent(orders=orders, rdp=total, delta=delta)
    return float(eps)


@functools.lru_cache(maxsize=256)
def _rdp_per_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """RDP(σ, q) of one step at the accountant's orders, cached per process and on disk (``rdp_cache_path``).

    The disk copy is for deployment, where every message runs in a fresh fork of the partner's SuperExec and
    the per-process cache starts empty each time: evaluating the curve was ~8 % of a forked task's CPU
    (profiled, session 14). A cached curve is used only when it was computed for exactly these σ, q and
    orders; anything else (a missing, truncated or foreign file) is recomputed, so a bad cache costs time,
    never a wrong ε.
    """
    orders = np.asarray(RDPAccountant.DEFAULT_ALPHAS, dtype=np.float64)
    path = rdp_cache_path(noise_multiplier, sample_rate)
    try:
        with np.load(path, allow_pickle=False) as cached:
            if (float(cached["noise_multiplier"]) == noise_multiplier
                    and float(cached["sample_rate"]) == sample_rate
                    and np.array_equal(cached["orders"], orders) and cached["rdp"].shape == orders.shape):
                return np.array(cached["rdp"])
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        pass
    rdp = np.asarray(rdp_analysis.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1,
                                              orders=list(RDPAccountant.DEFAULT_ALPHAS)), dtype=np.float64)
    with contextlib.suppress(OSError):  # a read-only home only costs the recomputation
        write_atomic(path, lambda fh: np.savez(fh, noise_multiplier=noise_multiplier, sample_rate=sample_rate,
                                               orders=orders, rdp=rdp))
    return rdp


def rdp_cache_path(noise_multiplier: float, sample_rate: float) -> Path:
    """Where RDP(σ, q) of one step is kept: the data dir, per Opacus version (its analysis could change)."""
    key = hashlib.sha256(repr((noise_multiplier, sample_rate, list(RDPAccountant.DEFAULT_ALPHAS))).encode())
    return data_root() / RDP_CACHE_DIR / f"opacus-{opacus.__version__}" / f"{key.hexdigest()[:32]}.npz"


def merged_history(entries: list[LedgerEntry]) -> list[tuple[float, float, int]]:
    """The accountant's (σ, q, steps) history with rounds of equal (σ, q) merged into one entry.

    Composition does not depend on the order of the steps (RDP adds steps·RDP(σ, q) per entry; PRV composes
    each entry's PRV steps times), so the ε is the same, but Opacus evaluates every entry separately (~0.2 s
    per RDP entry): unmerged, a 15-round ledger cost 3 s per ε. ``RDPAccountant.step`` merges consecutive
    equal steps the same way.
    """
    steps: dict[tuple[float, float], int] = {}
    for e in entries:
        key = (e.noise_multiplier, e.sample_rate)
        steps[key] = steps.get(key, 0) + e.steps
    return [(sigma, q, n) for (sigma, q), n in steps.items()]


def noise_for_target(target_epsilon: float, delta: float, sample_rate: float, steps: int,
                     accountant: str = "rdp") -> float:
    """σ that spends ``target_epsilon`` over ``steps`` steps at rate ``sample_rate`` (Opacus' helper)."""
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                          sample_rate=sample_rate, steps=steps, accountant=accountant))
