"""The one way fedrec puts its own function in place of one of Flower's (flwr 1.41) where Flower has no hook.

Used for SecAgg+'s cryptographic helpers (shared/secagg.py) and the Simulation Engine's feeder
(simulations/engine_feed.py). Flower's modules import such functions by name, so the name is rebound in the
module that calls it. Rebinding is idempotent, and a Flower whose module no longer has the name (another
layout than the one the replacement was written for) is refused loudly rather than left half-patched.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def rebind(module_name: str, name: str, replacement: Callable[..., Any], owner: str) -> None:
    """Point ``module_name.name`` at ``replacement``; ``owner`` (the fedrec module) is named in the error."""
    module = importlib.import_module(module_name)
    current = getattr(module, name, None)
    if current is replacement:
        return
    if not callable(current):
        raise RuntimeError(f"{module_name}.{name} is missing: this flwr version differs from the one {owner} "
                           "was written for (flwr 1.41)")
    setattr(module, name, replacement)
