"""Shamir sharing for SecAgg+: Flower's (pycryptodome) vs fedrec's ``shared/shamir.py``, same process.

What one store splits per SecAgg+ round (its 32-byte mask seed and its first private key, the secrets Flower's
``secaggplus_mod`` shares: a 306-byte PEM P-384 key with Flower's own key functions, a raw 32-byte X25519 key
with fedrec's, shared/secagg_keys.py) and what the server recombines per store, at the share count and
threshold of ``round_overhead``'s 50-store setting (11 shares, threshold 9). Median of ``--repeats`` calls
each; every recombined secret is checked. Ends with one JSON line.

    .venv/bin/python -m simulations.benchmarks.shamir_speed [--shares 11 --threshold 9 --repeats 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from flwr.common.secure_aggregation.crypto import shamir as flower_shamir
from flwr.supercore.primitives.asymmetric import generate_key_pairs, private_key_to_bytes

from shared import secagg_keys, shamir


def _median_ms(call: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shares", type=int, default=11)
    parser.add_argument("--threshold", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    secrets = {"mask_seed": os.urandom(32), "private_key": private_key_to_bytes(generate_key_pairs()[0]),
               "x25519_private_key": secagg_keys.private_key_to_bytes(secagg_keys.generate_key_pairs()[0])}
    result: dict[str, Any] = {"benchmark": "shamir_speed", "shares": args.shares, "threshold": args.threshold}
    for name, secret in secrets.items():
        row: dict[str, Any] = {"bytes": len(secret)}
        for side, module in (("flower", flower_shamir), ("fedrec", shamir)):
            shares = module.create_shares(secret, args.threshold, args.shares)
            if shamir.combine_shares(shares[-args.threshold:]) != secret:
                raise RuntimeError(f"{side}'s shares of the {name} do not recombine")
            split = partial(module.create_shares, secret, args.threshold, args.shares)
            combine = partial(module.combine_shares, shares[:args.threshold])
            row[f"{side}_split_ms"] = round(_median_ms(split, args.repeats), 3)
            row[f"{side}_combine_ms"] = round(_median_ms(combine, args.repeats), 3)
        row["split_speedup"] = round(row["flower_split_ms"] / row["fedrec_split_ms"], 1)
        row["combine_speedup"] = round(row["flower_combine_ms"] / row["fedrec_combine_ms"], 1)
        result[name] = row
        print(f"{name:<18} {len(secret):>4} B  split {row['flower_split_ms']:8.2f} → "
              f"{row['fedrec_split_ms']:6.2f} ms ({row['split_speedup']}×)  "
              f"combine {row['flower_combine_ms']:8.2f} → {row['fedrec_combine_ms']:6.2f} ms "
              f"({row['combine_speedup']}×)", flush=True)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
