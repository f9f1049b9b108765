"""Every serving setting with its default, in one typed, validated, frozen dataclass.

Serving settings are the partner's operational choices, not federated run configuration, so they live here and
not in pyproject's ``[tool.flwr.app.config]``. ``fedrec serve`` flags override them (client/serving/cli.py
derives its flags from the fields below); docs/serving.md explains each one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


class SettingsError(ValueError):
    """A serving setting out of range; the message names the flag."""


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"          # interface to bind; 0.0.0.0 to accept remote shoppers' front ends
    port: int = 50051                # 0 = an ephemeral port (printed at start-up)
    max_k: int = 100                 # largest k a request may ask for
    candidates: int = 200            # retrieved by inner product, then re-ranked by the full NeuMF
    score_all_below: int = 256       # catalogs up to this size skip retrieval (the measured break-even)
    ann_min_items: int = 5_000       # from this catalog size on, candidates come from the cluster index
    ann_clusters: int = 0            # k-means clusters of the index; 0 = 4·√items
    ann_probes: int = 0              # clusters scored per search; 0 = tuned to ann_recall_target
    ann_recall_target: float = 0.97  # tuning: the fewest probes whose recall@10 on shoppers reaches it
    ann_tuning_queries: int = 200    # tuning: shoppers sampled (their exact top-10 is computed once)
    reload_interval_s: float = 5.0   # how often the run dir and store state are checked for a new model
    max_text_chars: int = 4096       # longer AddItem / query text is truncated (the encoder reads 256 tokens)
    refresh_steps: int = 30          # fold-in of a shopper after a click / of a text query (Adam steps);
    refresh_learning_rate: float = 0.01  # both as validated in docs/cold_start.md (FOLD_IN_* there)
    explain_items: int = 2           # past items named per recommendation when explain = true
    mapping_ridge: float = 1.0       # ridge of the text -> item map fitted when cold_start.npz is absent
    workers: int = 8                 # threads for slow requests (encoding, click log); ranking: the loop
    seed: int = 0                    # online refit's negatives, index k-means, tuning sample

    def __post_init__(self) -> None:
        positive = ("max_k", "candidates", "ann_tuning_queries", "max_text_chars", "explain_items", "workers",
                    "ann_min_items")
        for name in positive:
            if getattr(self, name) < 1:
                raise SettingsError(f"{flag(name)}: {getattr(self, name)} must be >= 1")
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"{flag('port')}: {self.port} is not a TCP port (0 = ephemeral)")
        for name in ("refresh_steps", "score_all_below", "ann_clusters", "ann_probes"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{flag(name)}: {getattr(self, name)} must be >= 0")
        if self.reload_interval_s <= 0 or self.refresh_learning_rate <= 0 or self.mapping_ridge < 0:
            raise SettingsError(f"{flag('reload_interval_s')} and {flag('refresh_learning_rate')} must be "
                                f"> 0, {flag('mapping_ridge')} >= 0")
        if self.candidates < self.max_k:
            raise SettingsError(f"need {flag('max_k')} <= {flag('candidates')}, got {self.max_k}, "
                                f"{self.candidates}")
        if not 0.0 < self.ann_recall_target <= 1.0:
            raise SettingsError(f"{flag('ann_recall_target')}: {self.ann_recall_target} must be in (0, 1]")

    def replace(self, **changes: object) -> ServeSettings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def flag(field: str) -> str:
    """The command-line flag of a settings field (``max_k`` -> ``--max-k``)."""
    return "--" + field.replace("_", "-")


DEFAULTS = ServeSettings()
