"""SecAgg+ dropout (issue 7): 10 % and 30 % of a round's stores drop *after sharing keys* (they never send
their masked vector). With Flower 1.41's SecAgg+ and fedrec's strategy the outcome is the correct sum of
the survivors or a round that fails loudly — never a silently wrong model.

10 stores (3 tiny users each), SecAgg+ with 10 shares and reconstruction threshold 8, user-level DP with
K = 8 noise shares: 1 dropout leaves 9 ≥ 8 survivors (the masks of the dropped store are reconstructed from
its neighbours' shares), 3 dropouts leave 7 < 8 (the workflow halts; fedrec raises RoundFailed).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.common.secure_aggregation.secaggplus_constants import Stage

from server.strategy import RoundFailed
from shared.config import RunConfig
from shared.model import ModelShape, initial_shared, shared_shapes
from shared.wire import unpack
from tests.conftest import TINY_ITEMS, TINY_USERS
from tests.inprocess import run_in_process
from tests.test_privacy_e2e import (
    checkpoint_shared,
    client_app,
    quantization_step,
    raise_at_secagg_stage,
    read_json,
    record_fits,
)

STORES = 10
DROPOUT_CONFIG: dict[str, Any] = {
    "partition": "iid",
    "num_stores": STORES,
    "privacy": "user",
    "sigma_from_target": False,
    "noise_multiplier": 1.0,
    "user_sample_rate": 1.0,
    "user_local_steps": 2,
    "user_batch_size": 4,
    "user_refresh_epochs": 0,
    "target_epsilon": 50.0,
    "delta": 1e-3,
    "secagg": True,
    "secagg_num_shares": STORES,
    "secagg_reconstruction_threshold": 8,
    "noise_share_stores": 8,
    "secagg_clipping_range": 8.0,
    "num_rounds": 1,
}


def dropped_stores(rate: float) -> set[int]:
    return set(range(round(rate * STORES)))


def survivors_sum(fits_dir: Path, survivors: list[int], config: RunConfig) -> list[np.ndarray]:
    shapes = shared_shapes(ModelShape.from_config(config, TINY_ITEMS))
    arrays = []
    for store in survivors:
        with np.load(fits_dir / f"fit-1-{store}.npz") as data:
            sent = [data[f"a{i}"].astype(np.float64) for i in range(len(data.files) - 1)]
            arrays.append(unpack(sent, shapes))
    return [np.sum([a[i] for a in arrays], axis=0) for i in range(len(arrays[0]))]


def test_ten_percent_dropout_after_key_sharing_gives_the_survivors_exact_sum(
    make_config: Callable[..., RunConfig], tmp_path: Path
) -> None:
    fits_dir = tmp_path / "fits"
    fits_dir.mkdir()
    dropped = dropped_stores(0.1)
    config = make_config(run_dir=str(tmp_path / "run"), accept_failures=True, **DROPOUT_CONFIG)
    np.random.seed(0)
    app = client_app(
        config,
        outer=[raise_at_secagg_stage(Stage.COLLECT_MASKED_VECTORS, dropped)],
        inner=[record_fits(fits_dir)],
    )

    summary, _ = run_in_process(config, app, STORES)

    assert summary["status"] == "completed" and summary["clients"] == STORES - 1
    survivors = [s for s in range(STORES) if s not in dropped]
    assert sorted(int(p.stem.split("-")[2]) for p in fits_dir.glob("fit-1-*.npz")) == survivors
    # user-level DP-FedAvg applies Σ(survivors)/(q·N) with SGD at lr 1; SecAgg+ is off by < 1 level per store
    start = initial_shared(ModelShape.from_config(config, TINY_ITEMS), config.seed)
    applied = [
        a.astype(np.float64) - s
        for a, s in zip(checkpoint_shared(Path(config.run_dir), 1), start, strict=True)
    ]
    survived = survivors_sum(fits_dir, survivors, config)
    expected = [s / (config.user_sample_rate * TINY_USERS) for s in survived]
    bound = (STORES - 1) * quantization_step(config) / TINY_USERS + 1e-7
    assert max(float(np.abs(a - e).max()) for a, e in zip(applied, expected, strict=True)) < bound
    # the dropped store's update is not in it: adding it would move the model by far more than the bound
    assert max(float(np.abs(e).max()) for e in expected) > 100 * bound


def test_ten_percent_dropout_fails_the_round_loudly_unless_failures_are_accepted(
    make_config: Callable[..., RunConfig], tmp_path: Path
) -> None:
    config = make_config(run_dir=str(tmp_path / "run"), **DROPOUT_CONFIG)
    app = client_app(config, outer=[raise_at_secagg_stage(Stage.COLLECT_MASKED_VECTORS, dropped_stores(0.1))])
    with pytest.raises(RoundFailed, match=r"round 1: \d+ store\(s\) failed"):
        run_in_process(config, app, STORES)
    assert read_json(Path(config.run_dir) / "summary.json")["status"] == "failed"


@pytest.mark.parametrize("accept_failures", [True, False])
def test_thirty_percent_dropout_below_the_threshold_fails_loudly(
    make_config: Callable[..., RunConfig], tmp_path: Path, accept_failures: bool
) -> None:
    config = make_config(run_dir=str(tmp_path / "run"), accept_failures=accept_failures, **DROPOUT_CONFIG)
    app = client_app(config, outer=[raise_at_secagg_stage(Stage.COLLECT_MASKED_VECTORS, dropped_stores(0.3))])
    with pytest.raises(RoundFailed, match="round 1"):
        run_in_process(config, app, STORES)
    summary = read_json(Path(config.run_dir) / "summary.json")
    assert summary["status"] == "failed" and summary["rounds"] == 0
    assert not (Path(config.run_dir) / "checkpoints").exists()  # no model was produced from 7 of 10 stores
