"""Specification of simulations/benchmarks/serve_grpc_load.py: both load shapes reach a real server, count
every request, and report CPU per request on both sides. Slow (each run spawns a server process)."""

from __future__ import annotations

import pytest

from simulations.benchmarks.serve_grpc_load import main

pytestmark = pytest.mark.slow
SMALL = ["--items", "3000", "--requests", "300"]


def check(result: dict) -> None:
    assert result["errors"] == 0
    assert 0 < result["p50_ms"] <= result["p99_ms"] < 10_000
    assert result["server_cpu_ms_per_request"] > 0 and result["client_cpu_ms_per_request"] > 0
    assert 0 < result["in_process_p50_ms"] <= result["in_process_p99_ms"]


@pytest.mark.parametrize("stored", [False, True], ids=["ranking", "stored-reply"])
def test_a_closed_loop_run_answers_every_request(stored: bool) -> None:
    result = main([*SMALL, "--concurrency", "4", *(["--stored-reply"] if stored else [])])
    check(result)
    assert result["load"] == "closed loop, concurrency 4"
    assert result["stored_reply"] is stored


def test_an_open_loop_run_keeps_to_its_arrival_rate() -> None:
    """At a rate far below the server's capacity the run lasts as long as the arrivals do, so requests/s is
    the offered rate, not the server's throughput."""
    result = main([*SMALL, "--rate", "200"])
    check(result)
    assert result["load"] == "open loop, 200 requests/s"
    assert result["requests_per_s"] == pytest.approx(200, rel=0.25)


def test_a_trained_runs_store_is_served_to_its_own_shoppers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """--run-dir: the child loads the run as ``fedrec serve`` does, and the load asks for that store's
    shoppers only (any other id would be a cold-start answer, not the personalized path being timed)."""
    from tests.conftest import TINY_ITEMS
    from tests.serving_fixtures import make_tiny_run

    run = make_tiny_run(tmp_path)
    result = main(["--run-dir", str(run.run_dir), "--store", "0", "--requests", "200", "--concurrency", "4"])
    check(result)
    assert result["catalog"] == f"{run.run_dir} store 0"
    assert result["shoppers"] == len(run.store_users)
    assert result["items"] == TINY_ITEMS


def test_passes_report_each_run_and_their_medians() -> None:
    """--passes: one server, N loads; the headline numbers are the medians of the passes listed."""
    import statistics

    result = main([*SMALL, "--concurrency", "4", "--passes", "3"])
    check(result)
    assert result["passes"] == 3 and len(result["each_pass"]) == 3
    assert result["p99_ms"] == pytest.approx(statistics.median(p["p99_ms"] for p in result["each_pass"]))
    assert result["passes_with_p99_under_goal"] == sum(p["p99_ms"] < 10 for p in result["each_pass"])
    assert all(p["errors"] == 0 for p in result["each_pass"])


def test_client_nice_lowers_only_the_load_generators_priority(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """--client-nice: the load generator (its own process here, so that this test's stays as it is) lowers
    its priority after the server started, and says so; the server keeps the priority it started with."""
    import json
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "simulations.benchmarks.serve_grpc_load", *SMALL,
                           "--concurrency", "4", "--client-nice", "5"],
                          capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    check(result)
    assert (result["server_niceness"], result["client_niceness"]) == (os.nice(0), os.nice(0) + 5)
