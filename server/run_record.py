"""Everything a run leaves in its run directory, kept by the server.

``config.json`` (the exact settings), ``metrics.json`` (per round), ``ledger.json`` (the federation's and each
store's (σ, q, steps, ε) per round, so anyone can recompute ε), ``checkpoints/`` (resume), ``model.npz``
(final shared parameters), ``cold_start.npz`` (the text → item-vector mapping for new items,
server/cold_start.py) and ``summary.json`` (the run's result line).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from server.checkpoint import Checkpoint, load_latest, save_checkpoint
from server.cold_start import publish_for_run
from server.optimizer import ServerOptimizer
from shared.atomic import write_atomic, write_json_atomic
from shared.config import RunConfig
from shared.ledger import LedgerEntry, PrivacyLedger
from shared.privacy import federation_noise_multiplier, noise_shares

log = logging.getLogger(__name__)


class RunRecord:
    def __init__(self, run_dir: Path, config: RunConfig, names: list[str]) -> None:
        self.run_dir = run_dir
        self.config = config
        self.names = names
        self.history: list[dict[str, Any]] = []
        self.federation_ledger = PrivacyLedger(delta=config.delta)
        self.store_ledgers: dict[str, list[dict[str, Any]]] = {}
        self.completed_round = 0
        self.planned_rounds = config.num_rounds
        self.started = time.perf_counter()
        self.resumed_from: Checkpoint | None = None

    @classmethod
    def open(cls, run_dir: Path, config: RunConfig, names: list[str]) -> RunRecord:
        """A fresh record, or the state of the last checkpoint when ``run_dir`` holds one (resume)."""
        run_dir.mkdir(parents=True, exist_ok=True)
        record = cls(run_dir, config, names)
        checkpoint = load_latest(run_dir)
        if checkpoint is not None:
            record.resumed_from = checkpoint
            record.completed_round = checkpoint.round
            record.history = _resumed_history(run_dir, checkpoint)
            record.federation_ledger = PrivacyLedger.from_json(checkpoint.meta["federation_ledger"],
                                                               "checkpoint")
            record.store_ledgers = checkpoint.meta.get("store_ledgers", {})
            record.planned_rounds = max(0, config.num_rounds - checkpoint.round)
        write_json_atomic(run_dir / "config.json", config.to_flower())
        return record

    def checkpoint(self, round_: int, shared: list[np.ndarray], optimizer: ServerOptimizer) -> None:
        self.completed_round = round_
        meta = {"history": self.history, "federation_ledger": self.federation_ledger.to_json(),
                "store_ledgers": self.store_ledgers, "optimizer_steps": optimizer.steps}
        save_checkpoint(self.run_dir, Checkpoint(round_, shared, dict(optimizer.state), meta))
        self.write_ledger()

    def note_fit(self, round_: int, store_metrics: list[dict[str, Any]], n_stores: int) -> None:
        if self.config.privacy == "user":
            self.federation_ledger.record(round_, federation_noise_multiplier(self.config),
                                          self.config.user_sample_rate, 1)
        for metrics in store_metrics:
            if "store" not in metrics:
                continue
            self.store_ledgers.setdefault(str(metrics["store"]), []).append({
                "round": round_, "noise_multiplier": float(metrics.get("noise_multiplier", 0.0)),
                "sample_rate": float(metrics.get("sample_rate", 0.0)), "steps": int(metrics.get("steps", 0)),
                "epsilon": float(metrics.get("epsilon", 0.0))})
        self._current = {"round": round_, "stores": n_stores}
        if self.config.privacy == "user":
            self._current["diverged_users"] = sum(int(m.get("diverged_users", 0)) for m in store_metrics)

    def note_failures(self, round_: int, count: int, reasons: str) -> None:
        self.history.append({"round": round_, "failures": count, "reasons": reasons})
        self._write_metrics()

    def note_evaluation(self, round_: int, metrics: dict[str, float], loss: float,
                        seconds: float | None) -> None:
        """Round ``round_``'s entry. ``seconds`` is None for a round whose start this process did not see (the
        round a resumed run restarts from, evaluated with fold-evaluation): no time is made up for it."""
        fit = getattr(self, "_current", {})
        entry = {**(fit if fit.get("round") == round_ else {"round": round_}), "loss": loss,
                 **({} if seconds is None else {"seconds": seconds}), "epsilon": self.epsilon(), **metrics}
        self.history.append(entry)
        self._write_metrics()

    def has_evaluation(self, round_: int) -> bool:
        """Whether the history holds round ``round_``'s federated evaluation."""
        return any(entry.get("round") == round_ and "test/users" in entry for entry in self.history)

    def epsilon(self) -> float:
        """The federation's ε so far: the DP-FedAvg ledger (user mode), or the worst store (record mode:
        each record lives at one store, so stores compose in parallel)."""
        if self.config.privacy == "user":
            return self.federation_ledger.epsilon()
        if self.config.privacy == "interaction":
            return max((e[-1]["epsilon"] for e in self.store_ledgers.values() if e), default=0.0)
        return float("inf")

    def epsilon_prv(self) -> float | None:
        """The federation's ε from Opacus' PRV accountant (tighter than RDP), reported beside it."""
        if self.config.privacy != "user" or not self.federation_ledger.entries:
            return None
        try:
            return self.federation_ledger.epsilon("prv")
        except (MemoryError, ValueError, OverflowError) as exc:
            # Opacus' PRV grid grows as σ shrinks (σ = 0.001 asked for 84 GiB): the RDP ε is the ledger's
            # guarantee and stands; a second opinion that cannot be computed must not lose the run's result.
            log.warning("epsilon_prv not computed (%s: %s); epsilon (RDP) is the run's guarantee",
                        type(exc).__name__, exc)
            return None

    def epsilon_if_seen_alone(self) -> float:
        """The weaker per-store guarantee if one store's update were ever seen alone (σ/√K instead of σ)."""
        if self.config.privacy != "user":
            return self.epsilon()
        share = noise_shares(self.config) ** 0.5
        alone = PrivacyLedger(self.config.delta, [
            LedgerEntry(e.round, e.noise_multiplier / share, e.sample_rate, e.steps)
            for e in self.federation_ledger.entries])
        return alone.epsilon()

    def write_ledger(self) -> None:
        entries = []
        for i, entry in enumerate(self.federation_ledger.entries):
            partial = PrivacyLedger(self.config.delta, self.federation_ledger.entries[: i + 1])
            entries.append({**entry.as_dict(), "epsilon": partial.epsilon()})
        write_json_atomic(self.run_dir / "ledger.json", {
            "accountant": "rdp", "delta": self.config.delta, "privacy_unit": self.privacy_unit,
            "federation": entries, "stores": self.store_ledgers})

    @property
    def privacy_unit(self) -> str:
        return {"user": "user", "interaction": "interaction"}.get(self.config.privacy, "none")

    def _write_metrics(self) -> None:
        write_json_atomic(self.run_dir / "metrics.json", self.history)

    def finish(self, shared: list[np.ndarray], status: str, message: str = "") -> dict[str, Any]:
        """Write the final model and summary.json; return the summary (the run's JSON line)."""
        import io

        buffer = io.BytesIO()
        np.savez(buffer, allow_pickle=False, **dict(zip(self.names, shared, strict=True)))
        write_atomic(self.run_dir / "model.npz", lambda fh: fh.write(buffer.getvalue()))
        cold_start = publish_for_run(self.run_dir, self.config, self.names, shared) if status != "failed" \
            else "skipped: the run failed"
        self.write_ledger()
        evaluated = (h for h in reversed(self.history) if "test/users" in h)
        last: dict[str, Any] = next(evaluated, {})
        k = self.config.top_k
        summary: dict[str, Any] = {
            f"hr@{k}": last.get(f"test/hr@{k}"), f"ndcg@{k}": last.get(f"test/ndcg@{k}"),
            f"hr@{k}_full": last.get(f"test/hr@{k}_full"), f"ndcg@{k}_full": last.get(f"test/ndcg@{k}_full"),
            "auc": last.get("test/auc"), "users": last.get("test/users"),
            "rounds": self.completed_round, "clients": last.get("stores"),
            "seconds": round(time.perf_counter() - self.started, 2), "run_dir": str(self.run_dir),
            "epsilon": self.epsilon(), "epsilon_prv": self.epsilon_prv(),
            "epsilon_if_store_seen_alone": self.epsilon_if_seen_alone(),
            "delta": self.config.delta, "privacy_unit": self.privacy_unit, "secagg": self.config.secagg,
            "status": status, "cold_start": cold_start,
        }
        if message:
            summary["message"] = message
        write_json_atomic(self.run_dir / "summary.json", summary)
        return summary


def _resumed_history(run_dir: Path, checkpoint: Checkpoint) -> list[dict[str, Any]]:
    """The round history to continue from: metrics.json up to the checkpoint's round.

    The checkpoint of round r is written before round r's federated evaluation, so its own copy of the history
    lacks that evaluation; metrics.json, written after it, has it. Entries past the checkpoint (a newer
    checkpoint was moved aside) are dropped, failure notes are kept. Without a readable metrics.json: the
    checkpoint's copy.
    """
    try:
        history = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return list(checkpoint.meta.get("history", []))
    if not isinstance(history, list):
        return list(checkpoint.meta.get("history", []))
    return [entry for entry in history if isinstance(entry, dict)
            and (int(entry.get("round", 0)) <= checkpoint.round or "failures" in entry)]


def read_summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())
