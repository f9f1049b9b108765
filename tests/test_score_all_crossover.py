"""simulations/benchmarks/score_all_crossover.py: both ways are timed on the same catalogs, and on a trained
run the two top-10 lists are compared shopper by shopper."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulations.benchmarks.score_all_crossover import main
from tests.serving_fixtures import make_tiny_run


def test_both_ways_are_timed_per_size_and_a_run_is_compared_shopper_by_shopper(tmp_path: Path) -> None:
    run = make_tiny_run(tmp_path)
    result = main(["--sizes", "64", "300", "--calls", "30", "--run-dir", str(run.run_dir)])
    assert [row["items"] for row in result["synthetic"]] == [64, 300]
    for row in result["synthetic"]:
        assert row["two_stage_us"] > 0 and row["score_all_us"] > 0
        # rounded from the unrounded timings: it may differ by 0.01 from a ratio of the rounded ones
        assert row["score_all_over_two_stage"] == pytest.approx(row["score_all_us"] / row["two_stage_us"],
                                                                abs=0.011)
    trained = result["trained"]
    assert trained["shoppers"] == len(run.store_users)
    # The tiny catalog (120 items) is smaller than the 200 candidates: the two stages retrieve every item, so
    # they must rank exactly as scoring the whole catalog does.
    assert trained["items"] < result["candidates"]
    assert trained["identical_lists"] == 1.0 and trained["min_overlap_at_10"] == 1.0
