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
