"""Specification of server/optimizer.py: FedAdam's step and its floor τ (Reddi et al., ICLR 2021)."""

from __future__ import annotations

import numpy as np
import pytest

from server.optimizer import ServerOptimizer
from shared.config import from_mapping


def test_first_adam_step_is_lr_times_m_over_root_v_plus_tau() -> None:
    # After one step m = 0.1·u and √v = 0.1·|u|: a coordinate far above τ steps ≈ η·sign(u), one far below
    # τ (a noise-only row) steps ≈ η·0.1·u/τ, i.e. barely.
    optimizer = ServerOptimizer("adam", learning_rate=0.2, momentum=0.9, adam_tau=0.01)
    update = np.array([1.0, -1.0, 1e-4])
    stepped = optimizer.step([np.zeros(3)], [update])[0]
    expected = 0.2 * 0.1 * update / (0.1 * np.abs(update) + 0.01)
    np.testing.assert_allclose(stepped, expected)
    assert stepped[0] == pytest.approx(0.2 / 1.1) and abs(stepped[2]) < 1e-3


def test_the_optimizer_takes_every_setting_from_the_run_config() -> None:
    config = from_mapping({"server-optimizer": "adam", "server-learning-rate": 0.3, "server-adam-tau": 0.004,
                           "server-momentum": 0.5})
    optimizer = ServerOptimizer.from_config(config, steps=4)
    assert (optimizer.kind, optimizer.learning_rate, optimizer.adam_tau) == ("adam", 0.3, 0.004)
    assert (optimizer.momentum, optimizer.steps) == (0.5, 4)


@pytest.mark.parametrize("kind", ["sgd", "momentum", "adam"])
def test_a_float64_update_leaves_the_model_in_its_own_dtype(kind: str) -> None:
    # SecAgg+ hands the server a float64 sum; the published model stays float32, so messages stay half-size.
    optimizer = ServerOptimizer(kind, learning_rate=0.5, momentum=0.9)
    params = [np.ones((2, 3), dtype=np.float32), np.zeros(4, dtype=np.float32)]
    update = [np.full((2, 3), 0.25), np.full(4, -0.5)]
    for _ in range(2):
        params = optimizer.step(params, update)
        assert [p.dtype for p in params] == [np.float32, np.float32]
    assert kind != "sgd" or params[0][0, 0] == pytest.approx(1.25)
