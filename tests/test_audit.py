"""Specifications of ``fedrec audit`` (issue 7): config validation before anything runs, ε recomputed from
ledgers, each attack on a small case with a known answer, resume without redoing finished points, the report.

Fast: pure functions, hand-written ledgers, a fake simulation runner; the run-based cases use the in-process
Grid (tests/inprocess.py) on the tiny dataset.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from shared.config import ConfigError, RunConfig
from simulations.audit.accounting import audit_ledgers
from simulations.audit.attacks import (
    item_set_metrics,
    item_signal,
    masked_update,
    membership_auc,
    membership_pairs,
)
from simulations.audit.config import AuditConfig, audit_config_from_mapping
from simulations.audit.report import build_report
from simulations.audit.sweep import point_result_path, run_sweep
from tests.conftest import TINY_ITEMS, TINY_USERS

DELTA = 1e-5


def rdp(history: list[tuple[float, float, int]], delta: float = DELTA) -> float:
    accountant = RDPAccountant()
    accountant.history = list(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(accountant.get_epsilon(delta=delta))


def audit_mapping(data: Path, tmp_path: Path, **audit: Any) -> dict[str, Any]:
    """A small valid audit on the tiny dataset (q = 1: RDP/σ calibration in milliseconds)."""
    return {
        "audit": {
            "name": "tiny",
            "output-dir": str(tmp_path / "report"),
            "seeds": [0],
            "epsilons": [8.0, math.inf],
            "secagg": [False],
            "attacks": False,
            "max-runs": 4,
            **{key.replace("_", "-"): value for key, value in audit.items()},
        },
        "config": {
            "dataset": str(data),
            "num-rounds": 2,
            "user-sample-rate": 1.0,
            "delta": 1e-3,
            "gmf-dim": 4,
            "mlp-dim": 8,
            "mlp-layers": "16,8",
            "item-tower": "id",
            "torch-threads": 1,
            "device": "cpu",
            "partition": "stores-file",
            "num-stores": 3,
            "batch-size": 64,
        },
    }


# -- config validation: refused before anything runs, naming the key ----------------------------------------


def test_a_valid_audit_expands_into_one_point_per_setting_and_seed(tiny_data: Path, tmp_path: Path) -> None:
    audit = audit_config_from_mapping(audit_mapping(tiny_data, tmp_path, seeds=[0, 1]))
    assert [p.point_id for p in audit.points] == [
        "eps8-plain-seed0",
        "inf-plain-seed0",
        "eps8-plain-seed1",
        "inf-plain-seed1",
    ]
    assert [p.config.privacy for p in audit.points[:2]] == ["user", "none"]
    assert audit.points[0].config.target_epsilon == 8.0 and audit.points[2].config.seed == 1


def test_a_client_level_point_runs_one_user_per_client_with_an_odd_share_count(
    tiny_data: Path, tmp_path: Path
) -> None:
    raw = audit_mapping(tiny_data, tmp_path, epsilons=[], client_level_epsilons=[8.0])
    raw["config"].update(
        {"secagg-num-shares": 6, "secagg-reconstruction-threshold": 3, "noise-share-stores": 2}
    )
    (point,) = audit_config_from_mapping(raw).points
    assert point.point_id == "eps8-client-level-seed0" and point.client_level and point.secagg
    assert point.config.partition == "one-user-per-client" and point.config.secagg_num_shares == 7


def test_the_synthetic_scale_dataset_loads_in_the_documented_format(tmp_path: Path) -> None:
    from shared.data import load_dataset
    from simulations.benchmarks.cross_device_scale import write_synthetic_dataset

    dataset = load_dataset(str(write_synthetic_dataset(tmp_path / "synthetic", users=1001)))
    assert dataset.n_users == 1001 and dataset.n_items == 600


@pytest.mark.parametrize(
    ("where", "key", "named"),
    [
        ("audit", "epsilon", "audit.epsilon"),
        ("config", "noise-multipler", "noise-multipler"),
        (None, "sweep", "sweep"),
    ],
)
def test_an_unknown_key_is_refused_naming_it(
    tiny_data: Path, tmp_path: Path, where: str | None, key: str, named: str
) -> None:
    raw = audit_mapping(tiny_data, tmp_path)
    (raw[where] if where else raw)[key] = 1
    with pytest.raises(ConfigError, match=f"unknown .*'{named}'"):
        audit_config_from_mapping(raw)


def test_an_unknown_key_in_a_point_override_is_refused_naming_it(tiny_data: Path, tmp_path: Path) -> None:
    raw = audit_mapping(tiny_data, tmp_path, overrides={"8": {"server-lr": 1.0}})
    with pytest.raises(ConfigError, match="server-lr"):
        audit_config_from_mapping(raw)


@pytest.mark.parametrize("epsilon", [0.0, -1.0])
def test_a_non_positive_epsilon_target_is_refused(tiny_data: Path, tmp_path: Path, epsilon: float) -> None:
    with pytest.raises(ConfigError, match=r"audit\.epsilons: ε target .* is impossible"):
        audit_config_from_mapping(audit_mapping(tiny_data, tmp_path, epsilons=[epsilon]))


def test_an_epsilon_target_needing_absurd_noise_is_refused(tiny_data: Path, tmp_path: Path) -> None:
    # q = 1, 2 rounds, δ = 1e-3: ε = 0.01 needs σ ≈ 500 (> MAX_NOISE_MULTIPLIER = 50)
    with pytest.raises(ConfigError, match=r"audit\.epsilons: ε target 0\.01 .*impossible"):
        audit_config_from_mapping(audit_mapping(tiny_data, tmp_path, epsilons=[0.01]))


def test_a_sweep_over_the_run_budget_is_refused_naming_max_runs(tiny_data: Path, tmp_path: Path) -> None:
    raw = audit_mapping(tiny_data, tmp_path, epsilons=[1.0, 2.0, 8.0], secagg=[True, False], max_runs=5)
    with pytest.raises(ConfigError, match=r"audit\.max-runs: the sweep needs 6 runs"):
        audit_config_from_mapping(raw)


def test_a_point_past_the_privacy_budget_is_refused(tiny_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"audit\.epsilons: ε target 16 exceeds .*max-epsilon 8"):
        audit_config_from_mapping(audit_mapping(tiny_data, tmp_path, epsilons=[16.0]))
    # σ = 0.5 at q = 1 for 2 rounds spends ε ≫ 8
    with pytest.raises(ConfigError, match=r"audit\.noise-multipliers: σ=0\.5 .* > audit\.max-epsilon 8"):
        audit_config_from_mapping(audit_mapping(tiny_data, tmp_path, epsilons=[], noise_multipliers=[0.5]))


def test_an_empty_sweep_is_refused(tiny_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"audit\.epsilons: the sweep is empty"):
        audit_config_from_mapping(audit_mapping(tiny_data, tmp_path, epsilons=[]))


def test_the_shipped_audit_configs_parse() -> None:
    import tomllib

    for name in ("audit.toml", "audit-quick.toml"):
        raw = tomllib.loads((Path(__file__).parents[1] / "simulations" / "configs" / name).read_text())
        assert math.inf in raw["audit"]["epsilons"] and raw["audit"]["max-epsilon"] == 8.0
    assert {0.5, 1.0, 2.0, 4.0, 8.0} <= set(
        tomllib.loads((Path(__file__).parents[1] / "simulations/configs/audit.toml").read_text())["audit"][
            "epsilons"
        ]
    )


# -- ε recomputation from ledgers ---------------------------------------------------------------------------


def write_ledger(
    run_dir: Path, federation: list[dict[str, Any]], stores: dict[str, list[dict[str, Any]]]
) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "ledger.json").write_text(
        json.dumps(
            {
                "accountant": "rdp",
                "delta": DELTA,
                "privacy_unit": "user",
                "federation": federation,
                "stores": stores,
            }
        )
    )
    for store, entries in stores.items():
        home = run_dir / "stores" / f"store-{store}"
        home.mkdir(parents=True, exist_ok=True)
        (home / "ledger.json").write_text(
            json.dumps(
                {
                    "delta": DELTA,
                    "entries": [
                        {k: e[k] for k in ("round", "noise_multiplier", "sample_rate", "steps")}
                        for e in entries
                    ],
                }
            )
        )


def honest_entries(history: list[tuple[float, float, int]]) -> list[dict[str, Any]]:
    return [
        {
            "round": i + 1,
            "noise_multiplier": s,
            "sample_rate": q,
            "steps": n,
            "epsilon": rdp(history[: i + 1]),
        }
        for i, (s, q, n) in enumerate(history)
    ]


def test_recomputed_epsilon_per_round_matches_opacus_on_the_whole_history(tmp_path: Path) -> None:
    # q = 1 keeps Opacus fast here (RDP at q < 1 costs ~0.5 s per call); σ changes in round 3
    history = [(2.0, 1.0, 1), (2.0, 1.0, 1), (3.0, 1.0, 1)]
    write_ledger(
        tmp_path, honest_entries(history), {"0": honest_entries(history), "1": honest_entries(history)}
    )

    audit = audit_ledgers(tmp_path)

    assert audit["consistent"] and audit["mismatches"] == 0 and audit["max_abs_difference"] < 1e-9
    assert [e["rdp"] for e in audit["federation"]] == pytest.approx([rdp(history[:k]) for k in (1, 2, 3)])
    assert audit["final_rdp"] == pytest.approx(rdp(history))
    prv = PRVAccountant()
    prv.history = list(history)
    assert audit["final_prv"] == pytest.approx(prv.get_epsilon(delta=DELTA), rel=1e-6)
    assert audit["final_prv"] < audit["final_rdp"]  # PRV is the tighter accountant here
    assert audit["stopped_stores"] == []


def test_a_fresh_accountant_per_round_is_caught_as_under_reporting(tmp_path: Path) -> None:
    history = [(2.0, 1.0, 1)] * 3
    under = [{**e, "epsilon": rdp([history[0]])} for e in honest_entries(history)]  # each round alone
    write_ledger(tmp_path, under, {"0": honest_entries(history)})

    audit = audit_ledgers(tmp_path)

    assert not audit["consistent"] and audit["mismatches"] == 2  # rounds 2 and 3 under-reported
    assert audit["max_abs_difference"] == pytest.approx(rdp(history) - rdp([history[0]]))


def test_a_store_whose_own_ledger_file_disagrees_is_not_consistent(tmp_path: Path) -> None:
    history = [(2.0, 1.0, 1)] * 2
    write_ledger(tmp_path, honest_entries(history), {"0": honest_entries(history)})
    (tmp_path / "stores" / "store-0" / "ledger.json").write_text(json.dumps({"delta": DELTA, "entries": []}))
    audit = audit_ledgers(tmp_path)
    assert audit["store_files_match"] == {"0": False} and not audit["consistent"]


def test_stores_that_stopped_before_the_last_round_are_listed(tmp_path: Path) -> None:
    history = [(2.0, 1.0, 1)] * 3
    write_ledger(
        tmp_path, honest_entries(history), {"0": honest_entries(history), "1": honest_entries(history[:1])}
    )
    assert audit_ledgers(tmp_path)["stopped_stores"] == ["1"]


# -- attacks on known answers ------------------------------------------------------------------------------


def test_membership_auc_is_one_zero_and_one_half_on_known_cases() -> None:
    assert membership_auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert membership_auc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert membership_auc(np.ones(5), np.ones(7)) == 0.5  # ties count one half
    assert membership_auc(np.array([3.0, 1.0]), np.array([2.0])) == 0.5
    assert membership_auc(np.array([2.0, 2.0, 3.0]), np.array([2.0])) == pytest.approx((0.5 + 0.5 + 1) / 3)


def test_membership_pairs_match_each_member_with_the_nearest_unseen_item_in_popularity() -> None:
    indptr = np.array([0, 2, 2, 3])  # user 1 has no train interaction
    items = np.array([4, 4, 2])  # user 0 trained on item 4 (twice), user 2 on item 2
    popularity = np.array([0.0, 10.0, 20.0, 30.0, 40.0, 50.0])
    interacted = [{4, 5}, set(), {2}]  # user 0 also had item 5 (held out)
    users, members, nonmembers = membership_pairs(
        indptr, items, interacted, popularity, np.array([0, 1, 2]), np.random.default_rng(0)
    )
    assert users.tolist() == [0, 2] and members.tolist() == [4, 2]
    assert nonmembers[0] == 3  # 30 is nearest to 40 among unseen {0, 1, 2, 3}
    assert nonmembers[1] in (1, 3)  # 10 and 30 are equally near to 20


def test_popularity_alone_cannot_tell_matched_members_from_non_members() -> None:
    rng = np.random.default_rng(0)
    n_users, n_items = 200, 300
    popularity = rng.integers(1, 1000, n_items).astype(float)  # members are drawn ∝ popularity
    weights = popularity / popularity.sum()
    lists = [rng.choice(n_items, size=30, replace=False, p=weights) for _ in range(n_users)]
    indptr = np.concatenate(([0], np.cumsum([len(x) for x in lists])))
    users, members, nonmembers = membership_pairs(
        indptr, np.concatenate(lists), [set(x.tolist()) for x in lists], popularity, np.arange(n_users), rng
    )
    assert len(users) == n_users
    assert (
        membership_auc(popularity[np.concatenate(lists)], popularity) > 0.6
    )  # unmatched: popularity "works"
    assert abs(membership_auc(popularity[members], popularity[nonmembers]) - 0.5) < 0.1


def known_update(n_items: int, positives: list[int], negatives: list[int]) -> dict[str, np.ndarray]:
    bias = np.zeros((n_items, 1))
    bias[positives, 0] = 0.3
    bias[negatives, 0] = -0.2
    return {"item_bias.weight": bias, "out.weight": np.ones((1, 5))}


def test_item_set_is_recovered_exactly_from_a_plain_update() -> None:
    metrics = item_set_metrics(item_signal(known_update(200, [1, 5, 9, 40], [2, 3, 77]), 200), [1, 5, 9, 40])
    assert metrics == {
        "precision": 1.0,
        "recall": 1.0,
        "top_precision": 1.0,
        "chance": 0.02,
        "auc": 1.0,
        "set_size": 4.0,
    }


def test_item_embedding_rows_reveal_the_touched_items_without_a_sign() -> None:
    rows = np.zeros((50, 3))
    rows[[4, 7]] = 0.1
    metrics = item_set_metrics(item_signal({"gmf_item.weight": rows, "mlp_item.weight": rows}, 50), [4, 7])
    assert metrics["top_precision"] == 1.0 and metrics["auc"] == 1.0


def test_item_set_inference_falls_to_chance_under_large_noise() -> None:
    rng = np.random.default_rng(0)
    truth = list(range(0, 2000, 20))  # 100 of 2000 items: chance 0.05
    update = known_update(2000, truth, [])
    noisy = {n: a + rng.normal(0, 30.0, a.shape) for n, a in update.items()}  # σ·C ≫ the 0.3 signal
    metrics = item_set_metrics(item_signal(noisy, 2000), truth)
    assert metrics["chance"] == 0.05
    assert abs(metrics["top_precision"] - 0.05) < 0.05 and abs(metrics["auc"] - 0.5) < 0.1


def test_the_secagg_masked_vector_of_a_revealing_update_is_at_chance() -> None:
    rng = np.random.default_rng(1)
    truth = list(range(0, 2000, 20))
    update = known_update(2000, truth, [5, 6])
    names = list(update)
    masked = masked_update([update[n] for n in names], 8.0, 2**22, 2**32, rng)
    assert all(m.dtype == np.int64 and m.min() >= 0 and m.max() < 2**32 for m in masked)
    bias = masked[0].ravel().astype(np.float64) / 2**32
    assert abs(bias.mean() - 0.5) < 0.03 and abs(bias.std() - math.sqrt(1 / 12)) < 0.02  # uniform on [0, 1)
    metrics = item_set_metrics(
        item_signal(dict(zip(names, masked, strict=True)), 2000), truth, threshold=float(2**31)
    )
    assert abs(metrics["top_precision"] - 0.05) < 0.05 and abs(metrics["auc"] - 0.5) < 0.1


# -- the sweep resumes; the report is rebuilt from result files ----------------------------------------------


def fake_runner(calls: list[str]) -> Callable[[RunConfig], dict[str, Any]]:
    """Stands in for ``simulate``: writes a run directory with an honest ledger and per-round metrics."""

    def run(config: RunConfig) -> dict[str, Any]:
        calls.append(config.run_dir)
        run_dir = Path(config.run_dir)
        rounds = config.num_rounds
        history = [(2.0, config.user_sample_rate, 1)] * rounds if config.privacy == "user" else []
        entries = honest_entries(history)
        write_ledger(run_dir, entries, {"0": entries} if entries else {})
        hr = 0.3 if config.privacy == "user" else 0.5
        (run_dir / "metrics.json").write_text(
            json.dumps([{"round": r + 1, "test/hr@10": hr * (r + 1) / rounds} for r in range(rounds)])
        )
        return {
            "hr@10": hr,
            "ndcg@10": hr / 2,
            "hr@10_full": hr / 5,
            "ndcg@10_full": hr / 10,
            "rounds": rounds,
            "status": "completed",
            "clients": 3,
            "epsilon": entries[-1]["epsilon"] if entries else math.inf,
        }

    return run


def test_an_interrupted_audit_resumes_without_redoing_finished_points(
    tiny_data: Path, tmp_path: Path
) -> None:
    audit = audit_config_from_mapping(audit_mapping(tiny_data, tmp_path))
    calls: list[str] = []
    first = run_sweep(audit, fake_runner(calls), log=lambda _: None)
    assert len(calls) == 2 and all(point_result_path(audit, p).exists() for p in audit.points)

    # the second point is "interrupted": no result file, but its half-written run directory is there
    point_result_path(audit, audit.points[1]).unlink()
    stale = Path(first[1]["run_dir"]) / "stale-file"
    stale.write_text("half a run")
    second = run_sweep(audit, fake_runner(calls), log=lambda _: None)

    assert calls[2:] == [first[1]["run_dir"]]  # only the unfinished point ran again
    assert not stale.exists()  # from a clean run directory
    assert second[0] == first[0]


def test_a_finished_point_with_a_different_config_is_run_again(tiny_data: Path, tmp_path: Path) -> None:
    audit = audit_config_from_mapping(audit_mapping(tiny_data, tmp_path, epsilons=[8.0]))
    calls: list[str] = []
    run_sweep(audit, fake_runner(calls), log=lambda _: None)
    raw = audit_mapping(tiny_data, tmp_path, epsilons=[8.0])
    raw["config"]["num-rounds"] = 3
    run_sweep(audit_config_from_mapping(raw), fake_runner(calls), log=lambda _: None)
    assert len(calls) == 2


def test_the_report_holds_every_number_and_its_plots(tiny_data: Path, tmp_path: Path) -> None:
    audit: AuditConfig = audit_config_from_mapping(audit_mapping(tiny_data, tmp_path))
    results = run_sweep(audit, fake_runner([]), log=lambda _: None)

    build_report(audit, results, seconds=1.0)

    out = audit.output_dir
    report = json.loads((out / "report.json").read_text())  # strict JSON: ∞ is the string "inf"
    rows = {r["setting"]: r for r in report["utility_vs_epsilon"]}
    assert rows["ε=8"]["hr@10"] == 0.3 and rows["no DP (ε=∞)"]["epsilon_rdp"] == "inf"
    assert rows["ε=8"]["epsilon_rdp"] == pytest.approx(rdp([(2.0, 1.0, 1)] * 2))
    assert report["seeds"] == [0] and {"torch", "flwr", "opacus", "fedrec_commit"} <= set(report["versions"])
    assert report["points"][0]["config"]["target-epsilon"] == 8.0
    text = (out / "report.md").read_text()
    assert "| ε=8 | off |" in text and "| no DP (ε=∞) | off | ∞ |" in text
    for plot in ("utility_vs_epsilon.png", "epsilon_per_client_per_round.png", "hr10_per_round.png"):
        assert (out / plot).stat().st_size > 10_000 and f"({plot})" in text


# -- the attacks against a real (tiny, in-process) fedrec run -----------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> RunConfig:
    from client.app import build_client_app
    from tests.conftest import tiny_config, write_tiny_dataset
    from tests.inprocess import run_in_process

    root = tmp_path_factory.mktemp("audit-run")
    config = tiny_config(
        write_tiny_dataset(root / "data"),
        run_dir=str(root / "run"),
        num_rounds=3,
        local_epochs=3,
        user_local_steps=3,
        user_batch_size=4,
        learning_rate=0.05,
    )
    summary, _ = run_in_process(config, build_client_app(config), 3)
    assert summary["status"] == "completed"
    return config


def test_item_set_attack_on_a_real_client_update_is_far_above_chance_and_at_chance_when_masked(
    tiny_run: RunConfig,
) -> None:
    from simulations.audit.probes import item_set_inference

    result = item_set_inference(Path(tiny_run.run_dir), tiny_run, clients=TINY_USERS, seed=0)

    chance = result["plain"]["chance"]
    assert chance == pytest.approx(8 / TINY_ITEMS, abs=0.02)  # ~8 train items of 120
    # id tower: the sampled negatives' rows move too (no sign tells them apart): not every guess is right
    assert result["plain"]["auc"] > 0.8 and result["plain"]["top_precision"] > 5 * chance
    assert abs(result["secagg_masked"]["auc"] - 0.5) < 0.1
    assert result["secagg_sum"]["top_precision"] < result["plain"]["top_precision"]


def test_membership_inference_on_a_real_run_reports_both_targets(tiny_run: RunConfig) -> None:
    from simulations.audit.probes import membership_inference

    result = membership_inference(Path(tiny_run.run_dir), tiny_run, max_users=TINY_USERS, seed=0)
    assert result["pairs"] == TINY_USERS
    assert result["auc_personalized"] > 0.6  # without DP the personalized model has memorized its users
    assert 0.0 <= result["auc_released"] <= 1.0 and 0.0 <= result["auc_popularity_reference"] <= 1.0


def in_process_runner(config: RunConfig) -> dict[str, Any]:
    """``simulate`` without Ray: the real ServerApp body against the real ClientApp (tests/inprocess.py)."""
    from client.app import build_client_app
    from shared.workload import number_of_stores
    from tests.inprocess import run_in_process

    return run_in_process(config, build_client_app(config), number_of_stores(config))[0]


def test_the_same_seed_reproduces_every_number_of_a_point(tiny_data: Path, tmp_path: Path) -> None:
    results = []
    for copy in ("a", "b"):
        raw = audit_mapping(
            tiny_data,
            tmp_path / copy,
            epsilons=[8.0],
            attacks=True,
            item_set_clients=10,
            mia_users=TINY_USERS,
        )
        (result,) = run_sweep(audit_config_from_mapping(raw), in_process_runner, log=lambda _: None)
        results.append(result)
    a, b = (flatten({k: r[k] for k in ("summary", "accounting", "mia", "item_set")}) for r in results)
    for r in (a, b):
        for key in ("summary.run_dir", "summary.seconds"):
            r.pop(key)
    assert a.keys() == b.keys() and a["summary.status"] == "completed" and a["accounting.consistent"]
    numbers = [k for k, v in a.items() if isinstance(v, float)]
    assert len(numbers) > 40
    assert {k: a[k] for k in numbers} == pytest.approx({k: b[k] for k in numbers}, rel=1e-12, abs=1e-15)
    assert {k: v for k, v in a.items() if k not in numbers} == {
        k: v for k, v in b.items() if k not in numbers
    }


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flatten(item, f"{prefix}{key}.").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in flatten(item, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): value}


# -- the command ------------------------------------------------------------------------------------------


def write_audit_toml(path: Path, data: Path, out: Path, extra: str = "") -> Path:
    path.write_text(
        f'[audit]\nname = "tiny"\noutput-dir = "{out}"\nepsilons = [8.0, inf]\nsecagg = [false]\n'
        f"max-runs = 2\n{extra}\n"
        f'[config]\ndataset = "{data}"\nnum-rounds = 2\nuser-sample-rate = 1.0\ndelta = 1e-3\n'
        'item-tower = "id"\ngmf-dim = 4\nmlp-dim = 8\nmlp-layers = "16,8"\ntorch-threads = 1\n'
        'device = "cpu"\nbatch-size = 64\nuser-chunk-size = 8\n'
    )
    return path


def test_fedrec_audit_refuses_an_unknown_key_before_running_anything(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from simulations.cli import main

    config = write_audit_toml(tmp_path / "a.toml", tiny_data, tmp_path / "out", extra="attack = true")
    assert main(["audit", "--config", str(config)]) == 2
    assert "'audit.attack'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_fedrec_audit_check_lists_the_points_and_runs_nothing(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from simulations.cli import main

    config = write_audit_toml(tmp_path / "a.toml", tiny_data, tmp_path / "out")
    assert main(["audit", "--config", str(config), "--check"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "eps8-plain-seed0: ε=8, SecAgg+ off (to run)",
        "inf-plain-seed0: no DP (ε=∞), SecAgg+ off (to run)",
    ]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_fedrec_audit_end_to_end_on_ray_then_resumes_without_rerunning(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from simulations.cli import main

    out = tmp_path / "out"
    config = write_audit_toml(tmp_path / "a.toml", tiny_data, out, extra="item-set-clients = 10")
    assert main(["audit", "--config", str(config)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert {r["setting"] for r in report["utility_vs_epsilon"]} == {"ε=8", "no DP (ε=∞)"}
    assert all(a["consistent"] for a in report["accounting"].values())
    first = (out / "points" / "eps8-plain-seed0.json").read_text()
    capsys.readouterr()
    assert main(["audit", "--config", str(config)]) == 0
    assert "finished earlier" in capsys.readouterr().out
    assert (out / "points" / "eps8-plain-seed0.json").read_text() == first
