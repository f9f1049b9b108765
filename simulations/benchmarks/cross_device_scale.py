"""Cross-device scale: one user per client (client-level DP = user-level DP-FedAvg with each user its own
client, composed with SecAgg+), on ML-100K (943 clients) and on a synthetic dataset of ≥ 1,000 users; time per
round and peak memory of the whole simulation (driver + Ray processes). Ends with one JSON line.

    .venv/bin/python -m simulations.benchmarks.cross_device_scale --rounds 2 --synthetic-users 1200

Honest note printed in the JSON (``noise_overfactor``): in fedrec every client of a round adds its 1/K noise
share whether or not its user was Poisson-sampled (q = ``user-sample-rate``, the sampling the RDP accountant
assumes), so with n clients the sum carries n/K times the noise variance the ε needs — ε is honest (an
over-estimate), utility is not what a server-side client sample with K = the expected sample size would give.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from shared.config import from_mapping, parse_assignment
from shared.privacy import noise_shares
from simulations.simulate import simulate

SAMPLE_SECONDS = 0.5
PAGE_KIB = 1024
SYNTHETIC_ITEMS = 600
SYNTHETIC_INTERACTIONS_PER_USER = 20
GENRES = ("Action", "Comedy", "Drama", "Romance", "Thriller")


def write_synthetic_dataset(directory: Path, users: int, seed: int = 0) -> Path:
    """interactions.csv and items.csv in fedrec's dataset format (shared/data.py), popularity-skewed."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "items.csv").write_text(
        "item_id,title,categories\n"
        + "".join(
            f"{i},Synthetic title {i},{GENRES[i % len(GENRES)]}|{GENRES[(i * 7) % len(GENRES)]}\n"
            for i in range(SYNTHETIC_ITEMS)
        ),
        encoding="utf-8",
    )
    popularity = 1.0 / np.arange(1, SYNTHETIC_ITEMS + 1) ** 0.8
    popularity /= popularity.sum()
    rows = []
    for user in range(users):
        items = rng.choice(SYNTHETIC_ITEMS, size=SYNTHETIC_INTERACTIONS_PER_USER, replace=False, p=popularity)
        rows += [
            f"u{user},{item},{1_000_000 + 60 * k + user},{int(rng.integers(1, 6))}\n"
            for k, item in enumerate(items.tolist())
        ]
    (directory / "interactions.csv").write_text(
        "user_id,item_id,timestamp,rating\n" + "".join(rows), encoding="utf-8"
    )
    return directory


def _descendants(pid: int) -> list[int]:
    out, stack = [], [pid]
    while stack:
        current = stack.pop()
        out.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                stack += [int(c) for c in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
    return out


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class PeakMemory:
    """Samples the summed RSS of this process and all its descendants (Ray's raylet and workers) in a thread;
    ``resource.getrusage`` alone would miss the Ray workers, which are not waited-for children."""

    def __init__(self) -> None:
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = sum(_rss_kib(p) for p in _descendants(os.getpid()))
            self.peak_kib = max(self.peak_kib, total)
            self._stop.wait(SAMPLE_SECONDS)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def measure(name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    config = from_mapping(overrides)
    with PeakMemory() as memory:
        started = time.perf_counter()
        summary = simulate(config)
        seconds = time.perf_counter() - started
    metrics = json.loads((Path(summary["run_dir"]) / "metrics.json").read_text())
    per_round = [round(float(m["seconds"]), 2) for m in metrics if "seconds" in m]
    clients = int(summary.get("clients") or 0)
    row = {
        "dataset": name,
        "clients": clients,
        "rounds": summary["rounds"],
        "seconds_total": round(seconds, 1),
        "seconds_per_round": per_round,
        "seconds_per_round_after_first": round(float(np.mean(per_round[1:])), 2)
        if len(per_round) > 1
        else None,
        "peak_rss_mib_all_processes": round(memory.peak_kib / PAGE_KIB, 1),
        "peak_rss_mib_driver": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / PAGE_KIB, 1),
        "epsilon": summary["epsilon"],
        "hr@10": summary["hr@10"],
        "hr@10_full": summary["hr@10_full"],
        "noise_share_stores": noise_shares(config),
        "noise_overfactor": round(clients / noise_shares(config), 1) if config.privacy == "user" else None,
        "cpus": os.cpu_count(),
        "status": summary["status"],
    }
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--synthetic-users", type=int, default=1200, help="0 skips the synthetic run")
    parser.add_argument("--skip-ml100k", action="store_true")
    parser.add_argument("--data-dir", default="runs/cross-device-data")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    # SecAgg+ gives each client num_shares neighbours; with more clients than shares the count must be odd
    common: dict[str, Any] = {
        "partition": "one-user-per-client",
        "privacy": "user",
        "secagg": True,
        "secagg-num-shares": 11,
        "num-rounds": args.rounds,
        "target-epsilon": 8.0,
        **dict(parse_assignment(a) for a in args.set),
    }
    rows = []
    if not args.skip_ml100k:
        rows.append(measure("ml-100k", {**common, "dataset": "ml-100k"}))
    if args.synthetic_users:
        directory = write_synthetic_dataset(
            Path(args.data_dir) / f"synthetic-{args.synthetic_users}", args.synthetic_users
        )
        delta = min(1e-5, 0.1 / args.synthetic_users)
        rows.append(
            measure(
                f"synthetic-{args.synthetic_users}", {**common, "dataset": str(directory), "delta": delta}
            )
        )
    result = {
        "benchmark": "cross_device_scale",
        "rounds": args.rounds,
        "rows": rows,
        "note": "timings on a shared 2-core machine are noisy; noise_overfactor = clients / K (see doc)",
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
