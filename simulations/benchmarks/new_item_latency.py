"""New item from text to servable: ``AddItem`` end to end in-process, p50/p99 on CPU (goal p99 < 30 ms).

Each call encodes the text with the packaged all-MiniLM-L6-v2 (one torch thread), places it with the run's
text -> item-vector map, appends it durably (fsync) to the store's added-items log, and adds it to the catalog
and the cluster index of a synthetic catalog (serving_synthetic.py). The encoder alone is timed on the same
texts in the same process, so the share of everything else is visible. Ends with one JSON line.

    .venv/bin/python -m simulations.benchmarks.new_item_latency [--items 100000] [--adds 300]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from client.serving.bootstrap import MiniLMEmbedder
from client.serving.settings import ServeSettings
from shared.threads import limit_math_threads
from simulations.benchmarks.serving_synthetic import synthetic_model, synthetic_recommender

WARMUP = 10
PRODUCTS = ("lamp", "kettle", "backpack", "novel", "headphones", "tent", "blender", "jacket", "board game")
ADJECTIVES = ("compact", "wireless", "vintage", "waterproof", "family-size", "lightweight", "premium")


def product_text(n: int) -> str:
    """A short, distinct catalog text (title + description), the length of a typical item."""
    product, adjective = PRODUCTS[n % len(PRODUCTS)], ADJECTIVES[n % len(ADJECTIVES)]
    return (f"{adjective.title()} {product} model {n}. A {adjective} {product} for everyday use, "
            f"with a two-year warranty and free returns.")


def percentiles(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(float(np.percentile(values, 50)), 3),
            "p99_ms": round(float(np.percentile(values, 99)), 3)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--adds", type=int, default=300)
    args = parser.parse_args(argv)
    limit_math_threads()
    embedder = MiniLMEmbedder("")
    model, text = synthetic_model(args.items, text_dim=embedder.encoder.dim)
    with tempfile.TemporaryDirectory() as state:
        recommender = synthetic_recommender(model, text, ServeSettings(), embedder, Path(state))
        add_ms, encode_ms = [], []
        for n in range(WARMUP + args.adds):
            words = product_text(n)
            started = time.perf_counter()
            recommender.add_item(f"new-{n}", words, ["Home"])
            elapsed = (time.perf_counter() - started) * 1e3
            started = time.perf_counter()
            embedder.encode([words])
            encoded = (time.perf_counter() - started) * 1e3
            if n >= WARMUP:
                add_ms.append(elapsed)
                encode_ms.append(encoded)
        servable = recommender.similar_items(f"new-{WARMUP + args.adds - 1}", 1)[0]
    result = {"benchmark": "new_item_latency", "catalog_items": args.items, "adds": args.adds,
              "index": type(recommender.snapshot.index).__name__, "add_item": percentiles(add_ms),
              "encode_only": percentiles(encode_ms),
              "encode_share_p50": round(float(np.median(encode_ms) / np.median(add_ms)), 3),
              "servable_check": bool(servable)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
