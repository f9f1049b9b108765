"""The service's requests, free of gRPC: what ``service.py`` exposes and the benchmarks time in-process.

Concurrency model: every request reads ``self._snapshot`` once — an immutable ``ServingModel`` plus the item
space, retrieval index and online-refreshed users built for it — so a hot reload (one reference assignment)
can never show a request a half-loaded model. Writers (``AddItem``, ``RecordInteraction``, reload) take
``_write_lock``; items and index rows are appended in publish-last order (catalog.py): readers need no lock.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from client.serving.catalog import ItemSpace, ItemTable, retrieval_rows
from client.serving.diversity import mmr
from client.serving.interaction_log import (
    ADDED_ITEMS_FILE,
    INTERACTIONS_FILE,
    Interaction,
    JsonLinesLog,
    read_interactions,
    read_records,
)
from client.serving.model_bundle import ServingModel
from client.serving.retrieval import (
    CandidateIndex,
    build_index,
    retrieval_queries,
    retrieval_query,
    top_indices,
)
from client.serving.settings import ServeSettings, flag
from shared.cold_start import QueryPlacement, UserVectors, fit_user_from_clicks, rank_for_text, score

TITLE_CHARS = 80
CATEGORY_PREFIX = "Categories: "

log = logging.getLogger(__name__)


class ServingError(Exception):
    """A request the service refuses; ``code`` is the gRPC status name, the message names the field."""

    code = "INTERNAL"


class InvalidArgument(ServingError):
    code = "INVALID_ARGUMENT"


class NotFound(ServingError):
    code = "NOT_FOUND"


class AlreadyExists(ServingError):
    code = "ALREADY_EXISTS"


class Embedder(Protocol):
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm text embeddings [len(texts), d]."""
        ...


@dataclass(frozen=True)
class Recommendation:
    item_id: str
    title: str
    score: float
    because: tuple[str, ...] = ()


@dataclass(frozen=True)
class RecommendResult:
    items: list[Recommendation]
    cold_start: bool
    cold_start_reason: str
    model_version: str


@dataclass(frozen=True)
class ClickResult:
    refreshed: bool
    user_interactions: int


@dataclass(frozen=True, eq=False)
class Snapshot:
    """What one request reads; replaced as a whole on reload."""

    model: ServingModel
    space: ItemSpace
    index: CandidateIndex
    queries: np.ndarray  # each of the model's shoppers' retrieval query, by user row (once per model)
    refreshed: dict[str, UserVectors] = field(default_factory=dict)  # online-refitted shoppers


@dataclass(frozen=True)
class ServingInfo:
    model_version: str
    catalog_size: int
    known_users: int
    last_reload_error: str
    loaded_at: float
    mapping_source: str
    ann_probes: int = 0                    # clusters scored per search; 0: exact retrieval
    ann_recall_at_10: float | None = None  # what the tuned probe count reached on the store's shoppers
    ann_clusters: int = 0                  # clusters the index was built with; 0: exact retrieval


@dataclass
class ServingStatus:
    last_reload_error: str = ""
    reloads: int = 0


class Recommender:
    """The partner's recommender: one store's shoppers, the catalog, and a hot-swappable model."""

    def __init__(self, settings: ServeSettings, items: ItemTable, model: ServingModel,
                 history: dict[str, list[int]], embedder: Embedder, state_dir: Path | None) -> None:
        self.settings = settings
        self.items = items
        self.embedder = embedder
        self.status = ServingStatus()
        self._history = history        # user id -> catalog rows they interacted with (data + logged clicks)
        self._seen: dict[str, np.ndarray] = {}    # the same rows, unique and sorted (kept by _note_click)
        self._clicked: dict[str, list[int]] = {}  # user id -> logged clicks only
        self._write_lock = threading.RLock()
        self._clicks = JsonLinesLog(state_dir / INTERACTIONS_FILE) if state_dir else None
        self._added = JsonLinesLog(state_dir / ADDED_ITEMS_FILE) if state_dir else None
        if state_dir is not None:
            self._restore(state_dir)
        self._seen = {user: _unique_rows(rows) for user, rows in self._history.items()}
        self._snapshot = self._build_snapshot(model)
        self._refit_clicked(self._snapshot)

    # -- state -------------------------------------------------------------------------------------------
    def _restore(self, state_dir: Path) -> None:
        """Items added and clicks logged before a restart come back (the logs are the source of truth)."""
        added = [r for r in read_records(state_dir / ADDED_ITEMS_FILE)
                 if isinstance(r.get("item_id"), str) and r["item_id"] not in self.items.index]
        if added:
            embeddings = self.embedder.encode([_item_text(r["text"], r.get("categories", [])) for r in added])
            for record, embedding in zip(added, embeddings, strict=True):
                self.items.append(record["item_id"], _title(record["text"]), embedding)
        for click in read_interactions(state_dir):
            row = self.items.index.get(click.item_id)
            if row is not None:
                self._note_click(click.user_id, row)

    def _note_click(self, user_id: str, row: int) -> None:
        self._history.setdefault(user_id, []).append(row)
        # one reference assignment: a concurrent request reads the rows before or after the click
        self._seen[user_id] = _unique_rows(self._history[user_id])
        self._clicked.setdefault(user_id, []).append(row)
        self.items.count_click(row)

    def _build_snapshot(self, model: ServingModel) -> Snapshot:
        vectors = model.item_vectors
        base = len(vectors)
        if len(self.items) > base:  # added items: placed from their text by this model's mapping
            vectors = vectors.concat(model.mapping.place(self.items.text.view()[base:]))
        space = ItemSpace(vectors)
        queries = retrieval_queries(model.users.gmf, model.gmf_output_weight)
        index = build_index(space.retrieval, self.settings, self._tuning_sample(queries))
        return Snapshot(model, space, index, queries)

    def _tuning_sample(self, queries: np.ndarray) -> np.ndarray:
        """A seeded sample of the store's shoppers' queries: the index's probe count is tuned on them."""
        count = min(self.settings.ann_tuning_queries, len(queries))
        rows = np.random.default_rng(self.settings.seed).choice(len(queries), count, replace=False)
        return queries[np.sort(rows)]

    def _refit_clicked(self, snapshot: Snapshot) -> None:
        for user_id in self._clicked:
            snapshot.refreshed[user_id] = self._refit(snapshot, user_id)

    def _refit(self, snapshot: Snapshot, user_id: str) -> UserVectors:
        """Fold the shopper's whole history into their vectors, shared parameters frozen (cold_start.py)."""
        model = snapshot.model
        row = model.user_row.get(user_id)
        start = model.users.take(np.array([row])) if row is not None else model.fallback_user()
        size = len(snapshot.space)
        clicked = self._seen.get(user_id, NO_ROWS)
        return fit_user_from_clicks(model.head, snapshot.space.vectors(size), clicked[clicked < size],
                                    steps=self.settings.refresh_steps,
                                    learning_rate=self.settings.refresh_learning_rate,
                                    seed=self.settings.seed, start=start)

    def reload(self, load: ServingModelLoader) -> None:
        """Load a new model beside the old one and swap; on failure keep serving the old one, say why."""
        try:
            model = load()
        except Exception as exc:
            self.status.last_reload_error = f"{type(exc).__name__}: {exc}"
            log.error("new model not loaded, still serving %s: %s", self._snapshot.model.version, exc)
            raise
        with self._write_lock:
            snapshot = self._build_snapshot(model)
            self._refit_clicked(snapshot)
            self._snapshot = snapshot  # the atomic swap
        self.status.last_reload_error = ""
        self.status.reloads += 1
        log.info("serving model %s", model.version)

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    # -- validation --------------------------------------------------------------------------------------
    def _check_k(self, k: int) -> None:
        if not 1 <= k <= self.settings.max_k:
            raise InvalidArgument(f"k: {k} must be between 1 and {self.settings.max_k} ({flag('max_k')})")

    def _text(self, text: str, name: str) -> tuple[str, bool]:
        if not text.strip():
            raise InvalidArgument(f"{name}: empty; give some text to encode")
        limit = self.settings.max_text_chars
        return text[:limit], len(text) > limit

    def _row(self, item_id: str, name: str = "item_id") -> int:
        row = self.items.index.get(item_id)
        if row is None or row >= len(self._snapshot.space):
            raise NotFound(f"{name}: unknown item {item_id!r}")
        return row

    # -- requests ----------------------------------------------------------------------------------------
    def recommend(self, user_id: str, k: int, exclude_seen: bool = True, diversity: float = 0.0,
                  explain: bool = False) -> RecommendResult:
        self._check_k(k)
        if not user_id:
            raise InvalidArgument("user_id: empty")
        if not (math.isfinite(diversity) and 0.0 <= diversity <= 1.0):
            raise InvalidArgument(f"diversity: {diversity} must be in [0, 1]")
        snap = self._snapshot
        size = len(snap.space)
        history = self._history.get(user_id, [])
        # Sorted once per shopper (and per click), not per request: np.unique of a history was ~4 % of the
        # event loop's work under the gRPC load (py-spy, session 15).
        seen = self._seen.get(user_id, NO_ROWS) if exclude_seen else NO_ROWS
        user = snap.refreshed.get(user_id)
        row = snap.model.user_row.get(user_id)
        query = None if user is not None or row is None else snap.queries[row]
        if user is None and row is not None:
            user = snap.model.users.take(np.array([row]))
        cold = row is None
        if user is None:
            reason = ("unknown user, no interactions: popular items" if not history else
                      f"unknown user: popular items ({flag('refresh_steps')} 0 fits no vectors)")
            rows, scores = self._popular(size, k, seen)
        else:
            reason = f"unknown user: vectors fitted from {len(history)} logged clicks" if cold else ""
            rows, scores = self._personal(snap, user, query, size, k, seen, diversity)
        because = self._explain(snap, rows, history) if explain else [()] * len(rows)
        items = [Recommendation(self.items.ids[r], self.items.titles[r], float(s), b)
                 for r, s, b in zip(rows.tolist(), scores.tolist(), because, strict=True)]
        return RecommendResult(items, cold, reason, snap.model.version)

    def _popular(self, size: int, k: int, seen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        counts = self.items.popularity.view(size).copy()
        counts[seen[seen < size]] = -np.inf
        rows = top_indices(counts, k)
        rows = rows[np.isfinite(counts[rows])]
        return rows, counts[rows]

    def _personal(self, snap: Snapshot, user: UserVectors, query: np.ndarray | None, size: int, k: int,
                  seen: np.ndarray, diversity: float) -> tuple[np.ndarray, np.ndarray]:
        """``query``: the shopper's retrieval query if the snapshot holds it (None: refitted, made here)."""
        pool = max(self.settings.candidates, k)
        if size <= self.settings.score_all_below:
            candidates = np.arange(size)
        else:
            if query is None:
                query = retrieval_query(user.gmf[0], snap.model.gmf_output_weight)
            # room for the seen items filtered out below, bounded so one long history cannot slow the index
            candidates = snap.index.search(query, pool + min(len(seen), pool), size)
        if len(seen):
            candidates = candidates[~np.isin(candidates, seen)]
        if not len(candidates):
            return candidates, np.zeros(0, np.float32)
        scores = score(snap.model.head, user, snap.space.take(candidates))[0]
        if diversity > 0:
            best = top_indices(scores, pool)
            picks = best[mmr(scores[best], snap.space.unit.view()[candidates[best]], k, diversity)]
        else:
            picks = top_indices(scores, k)
        return candidates[picks], scores[picks]

    def _explain(self, snap: Snapshot, rows: np.ndarray, history: list[int]) -> list[tuple[str, ...]]:
        """For each recommended item, the shopper's past items nearest to it (cosine of item vectors)."""
        past = np.unique(np.asarray(history, dtype=np.int64))
        past = past[past < len(snap.space)]
        if not len(past) or not len(rows):
            return [()] * len(rows)
        unit = snap.space.unit.view()
        similarity = unit[rows] @ unit[past].T
        nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :self.settings.explain_items]
        return [tuple(self.items.ids[past[j]] for j in row) for row in nearest]

    def similar_items(self, item_id: str, k: int) -> tuple[list[Recommendation], str]:
        self._check_k(k)
        row = self._row(item_id)
        snap = self._snapshot
        unit = snap.space.unit.view()
        similarity = unit @ unit[row]
        similarity[row] = -np.inf
        rows = top_indices(similarity, k)
        return self._listing(rows, similarity[rows]), snap.model.version

    def recommend_for_text(self, query: str, k: int) -> tuple[list[Recommendation], str]:
        self._check_k(k)
        text, _ = self._text(query, "query")
        snap = self._snapshot
        size = len(snap.space)
        embedding = self.embedder.encode([text])[0]
        # The colleague's measured best (docs/cold_start.md): place the query like an item, fold it in as a
        # new shopper's one click, and let the model rank the catalog.
        placement = QueryPlacement(snap.model.head, snap.model.mapping, snap.space.vectors(size),
                                   start=snap.model.fallback_user(), steps=self.settings.refresh_steps,
                                   learning_rate=self.settings.refresh_learning_rate, seed=self.settings.seed)
        scores = rank_for_text(embedding, self.items.text.view(size), placement=placement)
        rows = top_indices(scores, k)
        return self._listing(rows, scores[rows]), snap.model.version

    def _listing(self, rows: np.ndarray, scores: np.ndarray) -> list[Recommendation]:
        return [Recommendation(self.items.ids[r], self.items.titles[r], float(s))
                for r, s in zip(rows.tolist(), scores.tolist(), strict=True)]

    def add_item(self, item_id: str, text: str, categories: Sequence[str] = ()) -> tuple[int, bool]:
        """Encode, place, persist and index a new item; returns (catalog size, whether text was truncated)."""
        if not item_id.strip():
            raise InvalidArgument("item_id: empty")
        if item_id in self.items.index:
            raise AlreadyExists(f"item_id: {item_id!r} is already in the catalog")
        text, truncated = self._text(text, "text")
        categories = [c.strip() for c in categories if c.strip()]
        embedding = self.embedder.encode([_item_text(text, categories)])[0]
        with self._write_lock:
            if item_id in self.items.index:
                raise AlreadyExists(f"item_id: {item_id!r} is already in the catalog")
            if self._added is not None:
                self._added.append({"item_id": item_id, "text": text, "categories": categories,
                                    "added_at": time.time()})
            snap = self._snapshot
            row = self.items.append(item_id, _title(text), embedding)
            vectors = snap.model.mapping.place(embedding[None])
            snap.space.append(vectors)
            snap.index.add(retrieval_rows(vectors), row)
            return len(snap.space), truncated

    def record_interaction(self, user_id: str, item_id: str, timestamp: int = 0) -> ClickResult:
        """Log the click durably, then refit the shopper so that their next ``recommend`` reflects it."""
        if not user_id:
            raise InvalidArgument("user_id: empty")
        if timestamp < 0:
            raise InvalidArgument(f"timestamp: {timestamp} must be >= 0 (0 = now)")
        row = self._row(item_id)
        click = Interaction(user_id, item_id, timestamp or int(time.time()))
        with self._write_lock:
            if self._clicks is not None:
                self._clicks.append(click.to_record())
            self._note_click(user_id, row)
            snap = self._snapshot
            refreshed = self.settings.refresh_steps > 0
            if refreshed:
                snap.refreshed[user_id] = self._refit(snap, user_id)
            return ClickResult(refreshed, len(self._history[user_id]))

    def info(self) -> ServingInfo:
        snap = self._snapshot
        width = snap.index.width
        return ServingInfo(snap.model.version, len(snap.space), len(snap.model.user_row),
                           self.status.last_reload_error, snap.model.loaded_at, snap.model.mapping_source,
                           width.probes if width else 0, width.recall_at_10 if width else None,
                           width.clusters if width else 0)



NO_ROWS = np.zeros(0, dtype=np.int64)
NO_ROWS.flags.writeable = False


def _unique_rows(rows: list[int]) -> np.ndarray:
    """A shopper's catalog rows, unique and sorted, read-only: requests share the array."""
    unique = np.unique(np.asarray(rows, dtype=np.int64))
    unique.flags.writeable = False
    return unique

class ServingModelLoader(Protocol):
    def __call__(self) -> ServingModel: ...


def _title(text: str) -> str:
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first[:TITLE_CHARS]


def _item_text(text: str, categories: Sequence[str]) -> str:
    """The text embedded for a new item, in the catalog's 'Title. text. Categories: a, b' form."""
    text = text.strip()
    if categories:
        end = "" if text.endswith((".", "!", "?")) else "."
        text = f"{text}{end} {CATEGORY_PREFIX}{', '.join(categories)}"
    return text
