"""Specification of shared/metrics.py on hand-computed cases (PROTOCOL.md: pessimistic ranks, sums)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from shared.metrics import (
    add_sums,
    catalog_coverage,
    full_metric_sums,
    mean_metrics,
    pessimistic_rank,
    sampled_metric_sums,
)

# User 0: positive 0.5 against [0.9, 0.5, 0.1, 0.0] → rank 2 (0.9 above, the tie at 0.5 counts against it).
# User 1: positive 0.2 against [0.1, 0.0, -1, -2]   → rank 0.
POSITIVE = torch.tensor([0.5, 0.2])
NEGATIVES = torch.tensor([[0.9, 0.5, 0.1, 0.0], [0.1, 0.0, -1.0, -2.0]])


def test_pessimistic_rank_counts_ties_against_the_positive() -> None:
    assert pessimistic_rank(POSITIVE, NEGATIVES).tolist() == [2, 0]


def test_sampled_hr_ndcg_auc_at_10() -> None:
    sums = sampled_metric_sums(POSITIVE, NEGATIVES, k=10)
    assert sums["hr@10"] == 2.0
    assert sums["ndcg@10"] == pytest.approx(1 / math.log2(4) + 1.0)  # 0.5 + 1
    assert sums["auc"] == pytest.approx(2 / 4 + 4 / 4)               # the tie is not "below"


def test_sampled_hit_needs_rank_below_k() -> None:
    sums = sampled_metric_sums(POSITIVE, NEGATIVES, k=2)
    assert sums["hr@2"] == 1.0 and sums["ndcg@2"] == 1.0  # only user 1 (rank 0) hits


def test_constant_model_has_sampled_rank_99_and_scores_zero() -> None:
    sums = sampled_metric_sums(torch.zeros(3), torch.zeros(3, 99), k=10)
    assert pessimistic_rank(torch.zeros(3), torch.zeros(3, 99)).tolist() == [99, 99, 99]
    assert sums == {"hr@10": 0.0, "ndcg@10": 0.0, "auc": 0.0}


def test_full_ranking_ignores_excluded_items() -> None:
    # Item 1 scores highest but is excluded (a train item); above held-out item 2 (0.3) remain 0.8 and 0.7.
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.2, 0.7]])
    excluded = torch.tensor([[False, True, False, False, False, False]])
    sums, top = full_metric_sums(scores, torch.tensor([2]), excluded, k=3)
    assert sums["hr@3_full"] == 1.0
    assert sums["ndcg@3_full"] == pytest.approx(0.5)   # rank 2: 1/log2(4)
    assert sums["recall@20_full"] == 1.0
    assert sums["precision@3_full"] == pytest.approx(1 / 3)
    assert top.tolist() == [[3, 5, 2]]                 # the excluded item 1 is not recommended


def test_full_ranking_miss_when_rank_reaches_k() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.2, 0.7]])
    excluded = torch.zeros(1, 6, dtype=torch.bool)
    sums, _ = full_metric_sums(scores, torch.tensor([2]), excluded, k=3)  # rank 3: 0.9, 0.8, 0.7 above
    assert sums["hr@3_full"] == 0.0 and sums["ndcg@3_full"] == 0.0 and sums["precision@3_full"] == 0.0


def test_constant_model_full_rank_is_number_of_candidates_minus_one() -> None:
    # 10 items, 2 excluded: 8 candidates including the held-out item → pessimistic rank 7.
    excluded = torch.zeros(1, 10, dtype=torch.bool)
    excluded[0, [5, 6]] = True
    hits = {k: full_metric_sums(torch.zeros(1, 10), torch.tensor([0]), excluded, k=k)[0][f"hr@{k}_full"]
            for k in (1, 7, 8)}
    assert hits == {1: 0.0, 7: 0.0, 8: 1.0}


def test_full_metric_sums_add_over_users() -> None:
    scores = torch.tensor([[0.3, 0.2, 0.1], [0.3, 0.2, 0.1]])
    excluded = torch.zeros(2, 3, dtype=torch.bool)
    sums, _ = full_metric_sums(scores, torch.tensor([0, 2]), excluded, k=1)  # ranks 0 and 2
    assert sums["hr@1_full"] == 1.0 and sums["ndcg@1_full"] == 1.0 and sums["recall@20_full"] == 2.0


def test_mean_metrics_divides_by_users_and_keeps_the_count() -> None:
    assert mean_metrics({"users": 4.0, "hr@10": 3.0, "auc": 2.0}) == {"users": 4.0, "hr@10": 0.75, "auc": 0.5}


def test_mean_metrics_of_no_users_is_only_the_zero_count() -> None:
    assert mean_metrics({"users": 0.0, "hr@10": 0.0}) == {"users": 0.0}


def test_add_sums_accumulates_in_place() -> None:
    total = {"users": 2.0, "hr@10": 1.0}
    assert add_sums(total, {"users": 3, "hr@10": 2.0, "auc": 1.5}) is total
    assert total == {"users": 5.0, "hr@10": 3.0, "auc": 1.5}


def test_catalog_coverage_is_the_share_of_items_in_any_top_k() -> None:
    tops = [np.array([[0, 1], [1, 2]]), np.array([[2, 7]])]
    assert catalog_coverage(tops, n_items=10) == pytest.approx(0.4)  # items 0, 1, 2, 7


NAN, INF = float("nan"), float("inf")


def test_a_model_whose_scores_overflowed_scores_zero_not_one() -> None:
    """NaN compares false with everything: unguarded, an all-NaN model ranked every positive first."""
    broken = torch.full((3, 99), NAN)
    assert pessimistic_rank(torch.full((3,), NAN), broken).tolist() == [99, 99, 99]
    assert sampled_metric_sums(torch.full((3,), NAN), broken, k=10) == {"hr@10": 0.0, "ndcg@10": 0.0,
                                                                          "auc": 0.0}
    nothing_excluded = torch.zeros(1, 6, dtype=torch.bool)
    sums, _ = full_metric_sums(torch.full((1, 6), NAN), torch.tensor([2]), nothing_excluded, k=3)
    assert sums["hr@3_full"] == 0.0 and sums["recall@20_full"] == 1.0  # 6 items: rank 6, still < 20


def test_an_overflowed_positive_misses_and_a_nan_competitor_counts_above() -> None:
    # User 0: positive +inf (overflow) → last. User 1: finite positive 0.2, one NaN competitor → rank 1.
    rank = pessimistic_rank(torch.tensor([INF, 0.2]), torch.tensor([[0.0, -1.0], [NAN, 0.1]]))
    assert rank.tolist() == [2, 1]
    assert sampled_metric_sums(torch.tensor([0.2]), torch.tensor([[NAN, 0.1]]), k=10)["auc"] == 0.5
