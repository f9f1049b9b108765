"""``Recommend`` over gRPC on loopback under bounded load: N requests at concurrency C (default 5,000 at 8).

The server runs in a child process (its own GIL, as ``fedrec serve`` would) over a synthetic catalog
(serving_synthetic.py), or with ``--run-dir`` over a trained run's store loaded as ``fedrec serve`` loads it
(its catalog, model and shoppers, who are then the ones asked for). This process drives it over one channel,
closed loop (C callers back to back, the default) or open loop (``--rate``: Poisson arrivals). Reports
client-side p50/p99, requests/s and errors; the server's and the load generator's CPU time per request (they
share the machine's cores); and, as the in-process baseline measured in the server process, the engine's own
p50/p99, so gRPC's share is visible. With ``--passes N`` the load runs N times against the one server and the
headline numbers are the medians, with every pass listed and how many met the p99 goal: these 2 shared cores
move a single pass's p99 by ±40 % from one minute to the next. Ends with one JSON line.

    .venv/bin/python -m simulations.benchmarks.serve_grpc_load [--items 100000 | --run-dir DIR --store S] \
        [--requests 5000] [--concurrency 8 | --rate 500] [--stored-reply] [--probes 0] [--passes 1]
        [--client-nice 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from client.serving.engine import Recommender
    from client.serving.settings import ServeSettings

K = 10
P99_GOAL_MS = 10.0  # issue 5: p99 under 10 ms over loopback at concurrency 8
BASELINE_CALLS = 500
WARMUP = 100


@dataclass(frozen=True)
class Catalog:
    """What the child serves: ``items`` synthetic items, or ``store`` of the trained run in ``run_dir``."""

    items: int
    run_dir: Path | None = None
    store: str = "0"


def build_recommender(catalog: Catalog, settings: ServeSettings) -> Recommender:
    if catalog.run_dir is None:
        from simulations.benchmarks.serving_synthetic import synthetic_model, synthetic_recommender

        model, text = synthetic_model(catalog.items)
        return synthetic_recommender(model, text[:, :8], settings)
    from client.serving.bootstrap import open_run_store

    return open_run_store(catalog.run_dir, catalog.store, settings).recommender


def serve_catalog(catalog: Catalog, connection: Connection, stored_reply: bool = False,
                  probes: int = 0) -> None:
    """Child process: build the recommender, time it in-process, serve until told to stop. With
    ``stored_reply`` every request gets one reply computed at start-up: what gRPC alone costs (the floor)."""
    from client.serving.service import start_server
    from client.serving.settings import ServeSettings
    from shared.threads import limit_math_threads

    limit_math_threads()
    settings = ServeSettings(port=0, ann_probes=probes)
    recommender = build_recommender(catalog, settings)
    users = sorted(recommender.snapshot.model.user_row)
    rng = np.random.default_rng(1)
    timings = []
    for n in range(BASELINE_CALLS):
        started = time.perf_counter()
        recommender.recommend(users[rng.integers(0, len(users))], K)
        if n >= WARMUP:
            timings.append((time.perf_counter() - started) * 1e3)
    if stored_reply:
        reply = recommender.recommend(users[0], K)
        recommender.recommend = lambda *args, **kwargs: reply  # type: ignore[method-assign]
    server = start_server(recommender, settings)
    width = recommender.snapshot.index.width  # the cluster index only; exact retrieval probes everything
    connection.send({"port": server.port, "users": users, "items": recommender.info().catalog_size,
                     "clusters": width.clusters if width else None, "probes": width.probes if width else None,
                     "niceness": os.nice(0),
                     "in_process_p50_ms": float(np.percentile(timings, 50)),
                     "in_process_p99_ms": float(np.percentile(timings, 99))})
    cpu_started = 0.0
    while (message := connection.recv()) != "stop":  # one "start" / "end" pair per pass of the load
        if message == "start":
            cpu_started = time.process_time()
        else:
            connection.send(time.process_time() - cpu_started)
    server.stop(grace=None)


@dataclass
class Load:
    """What the load generator saw: per-request latency (ms), failed requests, wall and own CPU seconds."""

    latencies: np.ndarray
    errors: int
    elapsed_s: float
    client_cpu_s: float


def drive(port: int, users: Sequence[str], requests: int, concurrency: int, rate: float | None = None,
          on_start: Callable[[], None] = lambda: None, on_end: Callable[[], None] = lambda: None) -> Load:
    """Closed loop (``rate`` None): C asyncio callers on one channel, each sending its share of the requests
    back to back, so the server is saturated and latency is mostly queueing (C / throughput). Open loop
    (``rate`` requests/s): requests arrive at Poisson times whatever the replies do, and each latency counts
    from the scheduled arrival, so time spent waiting behind a slow reply is counted (no coordinated
    omission) — how a partner's site, whose shoppers do not wait for each other, loads the service.

    Why asyncio rather than threads: the load generator shares the 2 cores with the server, and a
    thread-per-caller client spent ~0.5 ms of CPU per request on thread switches that the server then lacks.
    """
    return asyncio.run(_drive(port, users, requests, concurrency, rate, on_start, on_end))


async def _drive(port: int, user_ids: Sequence[str], requests: int, concurrency: int, rate: float | None,
                 on_start: Callable[[], None], on_end: Callable[[], None]) -> Load:
    import grpc

    from shared.proto import recommend_pb2 as pb
    from shared.proto import recommend_pb2_grpc as pb_grpc

    latencies = np.zeros(requests)
    errors = [0]
    rng = np.random.default_rng(0)
    users = rng.integers(0, len(user_ids), requests)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=30)
        stub = pb_grpc.RecommenderStub(channel)
        for n in range(WARMUP):
            await stub.Recommend(pb.RecommendRequest(user_id=user_ids[n % len(user_ids)], k=K))

        async def send(n: int, started: float) -> None:
            try:
                reply = await stub.Recommend(pb.RecommendRequest(user_id=user_ids[users[n]], k=K), timeout=10)
                if len(reply.items) != K:
                    errors[0] += 1
            except grpc.RpcError:
                errors[0] += 1
            latencies[n] = (time.perf_counter() - started) * 1e3

        async def caller(slot: int) -> None:
            for n in range(slot, requests, concurrency):
                await send(n, time.perf_counter())

        async def arrivals(first: float) -> None:
            due = first + np.cumsum(rng.exponential(1.0 / rate, requests)) if rate else np.zeros(0)
            tasks = []
            for n in range(requests):
                await asyncio.sleep(max(0.0, due[n] - time.perf_counter()))
                tasks.append(asyncio.create_task(send(n, float(due[n]))))
            await asyncio.gather(*tasks)

        on_start()
        started, cpu_started = time.perf_counter(), time.process_time()
        if rate:
            await arrivals(started)
        else:
            await asyncio.gather(*(caller(slot) for slot in range(concurrency)))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        on_end()
    return Load(latencies, errors[0], elapsed, cpu)


def summarise(load: Load, server_cpu_s: float, requests: int) -> dict[str, Any]:
    return {"errors": load.errors,
            "p50_ms": round(float(np.percentile(load.latencies, 50)), 3),
            "p99_ms": round(float(np.percentile(load.latencies, 99)), 3),
            "requests_per_s": round(requests / load.elapsed_s, 1),
            "server_cpu_ms_per_request": round(server_cpu_s / requests * 1e3, 3),
            "client_cpu_ms_per_request": round(load.client_cpu_s / requests * 1e3, 3)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000, help="synthetic catalog size")
    parser.add_argument("--run-dir", type=Path, help="serve this trained run's store instead (--store)")
    parser.add_argument("--store", default="0", help="with --run-dir: the store whose shoppers are asked for")
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=8, help="closed loop: callers back to back")
    parser.add_argument("--rate", type=float, help="open loop instead: Poisson arrivals, requests/s")
    parser.add_argument("--stored-reply", action="store_true",
                        help="the server answers every request with one stored reply: gRPC's own cost")
    parser.add_argument("--probes", type=int, default=0,
                        help="the server's --ann-probes (0, the default: tuned at start-up)")
    parser.add_argument("--client-nice", type=int, default=0,
                        help="once the server runs, lower this load generator's CPU priority by N (os.nice): "
                             "on shared cores it then runs when the server does not, as if on another "
                             "machine; its own delays still count in the latencies it measures")
    parser.add_argument("--passes", type=int, default=1,
                        help="run the load N times against the one server; report each and the medians")
    args = parser.parse_args(argv)
    if args.passes < 1:
        parser.error(f"--passes: {args.passes} must be >= 1")
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    catalog = Catalog(args.items, args.run_dir, args.store)
    server = context.Process(target=serve_catalog, daemon=True,
                             args=(catalog, child, args.stored_reply, args.probes))
    server.start()
    ready = parent.recv()
    if args.client_nice:
        os.nice(args.client_nice)  # after the spawn: the server keeps its priority
    passes = []
    try:
        for _ in range(args.passes):
            load = drive(ready["port"], ready["users"], args.requests, args.concurrency, args.rate,
                         on_start=lambda: parent.send("start"),
                         on_end=lambda: parent.send("end"))
            passes.append(summarise(load, parent.recv(), args.requests))
    finally:
        parent.send("stop")
        server.join(timeout=30)
    median = {key: round(float(np.median([p[key] for p in passes])), 3) for key in passes[0]
              if key != "errors"}
    under_goal = sum(p["p99_ms"] < P99_GOAL_MS for p in passes)
    result = {"benchmark": "serve_grpc_load", "items": ready["items"],
              "catalog": "synthetic" if args.run_dir is None else f"{args.run_dir} store {args.store}",
              "shoppers": len(ready["users"]), "clusters": ready["clusters"], "probes": ready["probes"],
              "requests": args.requests,
              "load": f"open loop, {args.rate:g} requests/s" if args.rate else
              f"closed loop, concurrency {args.concurrency}", "stored_reply": args.stored_reply,
              "server_niceness": ready["niceness"], "client_niceness": os.nice(0),
              "errors": sum(p["errors"] for p in passes), **median,
              "passes": len(passes), "passes_with_p99_under_goal": under_goal, "p99_goal_ms": P99_GOAL_MS,
              "in_process_p50_ms": round(ready["in_process_p50_ms"], 3),
              "in_process_p99_ms": round(ready["in_process_p99_ms"], 3),
              **({"each_pass": passes} if len(passes) > 1 else {})}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
