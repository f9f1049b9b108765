"""``Recommend`` over gRPC on loopback under bounded load: N requests at concurrency C (default 5,000 at 8).

The server runs in a child process (its own GIL, as ``fedrec serve`` would) over a synthetic catalog
(serving_synthetic.py); this process drives it with C asyncio callers sharing one channel, each sending its
share of requests back to back. Reports client-side p50/p99, requests/s and errors, and — as the in-process
baseline measured in the server process — the engine's own p50/p99, so gRPC's share is visible. Ends with
one JSON line.

    .venv/bin/python -m simulations.benchmarks.serve_grpc_load [--items 100000] [--requests 5000] \
        [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import time
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

K = 10
BASELINE_CALLS = 500
WARMUP = 100


def serve_synthetic(items: int, connection: Connection) -> None:
    """Child process: build the recommender, time it in-process, serve until told to stop."""
    from client.serving.service import start_server
    from client.serving.settings import ServeSettings
    from client.serving.threads import limit_math_threads
    from simulations.benchmarks.serving_synthetic import USERS, synthetic_model, synthetic_recommender

    limit_math_threads()
    settings = ServeSettings(port=0)
    model, text = synthetic_model(items)
    recommender = synthetic_recommender(model, text[:, :8], settings)
    rng = np.random.default_rng(1)
    timings = []
    for n in range(BASELINE_CALLS):
        started = time.perf_counter()
        recommender.recommend(f"u{rng.integers(0, USERS)}", K)
        if n >= WARMUP:
            timings.append((time.perf_counter() - started) * 1e3)
    server = start_server(recommender, settings)
    connection.send({"port": server.port, "in_process_p50_ms": float(np.percentile(timings, 50)),
                     "in_process_p99_ms": float(np.percentile(timings, 99))})
    connection.recv()  # stop
    server.stop(grace=None)


def drive(port: int, requests: int, concurrency: int) -> tuple[np.ndarray, int, float]:
    """C asyncio tasks on one channel, each sending its share of the requests back to back.

    Why asyncio rather than C threads: the load generator shares the 2 cores with the server, and a
    thread-per-caller client spent ~0.5 ms of CPU per request on thread switches that the server then lacks.
    """
    return asyncio.run(_drive(port, requests, concurrency))


async def _drive(port: int, requests: int, concurrency: int) -> tuple[np.ndarray, int, float]:
    import grpc

    from shared.proto import recommend_pb2 as pb
    from shared.proto import recommend_pb2_grpc as pb_grpc
    from simulations.benchmarks.serving_synthetic import USERS

    latencies = np.zeros(requests)
    errors = [0] * concurrency
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=30)
        stub = pb_grpc.RecommenderStub(channel)
        for n in range(WARMUP):
            await stub.Recommend(pb.RecommendRequest(user_id=f"u{n % USERS}", k=K))

        async def caller(slot: int) -> None:
            rng = np.random.default_rng(slot)
            for n in range(slot, requests, concurrency):
                request = pb.RecommendRequest(user_id=f"u{rng.integers(0, USERS)}", k=K)
                started = time.perf_counter()
                try:
                    reply = await stub.Recommend(request, timeout=10)
                    if len(reply.items) != K:
                        errors[slot] += 1
                except grpc.RpcError:
                    errors[slot] += 1
                latencies[n] = (time.perf_counter() - started) * 1e3

        started = time.perf_counter()
        await asyncio.gather(*(caller(slot) for slot in range(concurrency)))
        elapsed = time.perf_counter() - started
    return latencies, sum(errors), elapsed


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    server = context.Process(target=serve_synthetic, args=(args.items, child), daemon=True)
    server.start()
    ready = parent.recv()
    try:
        latencies, errors, elapsed = drive(ready["port"], args.requests, args.concurrency)
    finally:
        parent.send("stop")
        server.join(timeout=30)
    result = {"benchmark": "serve_grpc_load", "items": args.items, "requests": args.requests,
              "concurrency": args.concurrency, "errors": errors,
              "p50_ms": round(float(np.percentile(latencies, 50)), 3),
              "p99_ms": round(float(np.percentile(latencies, 99)), 3),
              "requests_per_s": round(args.requests / elapsed, 1),
              "in_process_p50_ms": round(ready["in_process_p50_ms"], 3),
              "in_process_p99_ms": round(ready["in_process_p99_ms"], 3)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
