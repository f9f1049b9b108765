"""Two-stage ranking: inner-product retrieval of candidates, then re-ranking by the full NeuMF.

NeuMF's logit is ``w_g · (u_g ⊙ i_g) + MLP([u_m, i_m]) + b (+ item bias)``. The GMF part and the bias are an
inner product: ``[u_g ⊙ w_g, 1] · [i_g, bias_i]``. Stage one retrieves the items with the largest such inner
product — exactly (NumPy) for small catalogs, with an HNSW index (usearch, inner-product metric) from
``ann_min_items`` on — in this (gmf_dim + 1)-dimensional collaborative space, never the 384-d text space.
Stage two scores the candidates with the complete model (``shared.cold_start.score``), MLP included, which
is what the final order follows. Catalogs up to ``score_all_below`` items skip stage one: there NeuMF scores
every item as fast as the two stages run (``simulations/benchmarks/score_all_crossover.py``), and ranks
exactly like the evaluation does. Above it scoring everything costs more with each item (3.2× the two stages
at ML-100K's 1,682 items, 6.3× at 4,096), while the lists stay the same (identical top-10s for all 943
shoppers of the default ML-100K model).

The index choice, its parameters and its recall@10 against exact retrieval are measured by
``simulations/benchmarks/serve_latency.py`` (docs/serving.md). The HNSW beam width (ef-search) is tuned when
the index is built, on the store's own shoppers (``tune_search_width``): recall depends on where the queries
point (a trained model's GMF output weights can tilt every query towards the bias axis, where recall@10 at
100k items fell to ~0.7 at ef 128), so no fixed ef is safe for every model, and a wider beam than needed
costs every request (ef 400 against 200: +0.2 ms a request at 100k items, for recall@10 0.995 vs 0.994).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from client.serving.catalog import Growable
from client.serving.settings import ServeSettings

FLOAT = np.float32
RECALL_K = 10                                  # the recall@10 the tuning and the benchmarks report
SEARCH_WIDTH_STEPS = (1.0, 1.5, 2.0, 3.0, 5.0)  # ef-search rungs tried, as multiples of the candidate pool
DEGREE_STEPS = (1, 2, 4)                       # graph degrees tried, × --hnsw-m (each one a rebuild)
TRUTH_CHUNK = 16                               # queries per exact product: 16 x 1M items x 4 B = 64 MB
ORDER_SAMPLE = 20_000                          # rows the insertion order's k-means centroids are fitted on
ORDER_ITERATIONS = 8                           # Lloyd iterations: a rough grouping is all locality needs
ASSIGN_CHUNK = 16_384                          # rows per distance block: 16k x 512 centroids x 4 B = 32 MB
BACKBONE_SHARE = 0.05                          # of the rows, added first in random order (locality_order)
ADD_CHUNK = 65_536                             # rows copied into the index per call: 8.7 MB at 33 dims

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchWidth:
    """The HNSW beam width in use and the recall@10 it reached on the store's shoppers (None: set by hand)."""

    ef: int
    recall_at_10: float | None = None
    target: float | None = None
    tuning_s: float = 0.0
    degree: int = 0     # the graph degree (M) the index was built with

    @property
    def short_of_target(self) -> bool:
        return self.recall_at_10 is not None and self.target is not None and self.recall_at_10 < self.target


class CandidateIndex(Protocol):
    @property
    def width(self) -> SearchWidth | None:
        """HNSW's beam width and the recall it reached (None: exact search has no beam)."""
        ...

    def search(self, query: np.ndarray, count: int, size: int) -> np.ndarray:
        """Indices (< size) of up to ``count`` items with the largest inner product with ``query``."""
        ...

    def add(self, rows: np.ndarray, first: int) -> None:
        """Index rows that were appended at catalog indices ``first``, ``first + 1``, ..."""
        ...


def top_indices(scores: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` largest scores, best first (argpartition, then a sort of the few)."""
    count = min(count, len(scores))
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    part = np.argpartition(-scores, count - 1)[:count] if count < len(scores) else np.arange(len(scores))
    return part[np.argsort(-scores[part], kind="stable")].astype(np.int64)


class ExactIndex:
    """Exact inner-product search over the catalog's retrieval rows (no extra memory, no build)."""

    width: SearchWidth | None = None

    def __init__(self, rows: Growable) -> None:
        self.rows = rows

    def search(self, query: np.ndarray, count: int, size: int) -> np.ndarray:
        return top_indices(self.rows.view(size) @ query, count)

    def add(self, rows: np.ndarray, first: int) -> None:
        """Nothing to do: ``search`` reads the growing rows directly."""


class SharedExclusiveLock:
    """Many concurrent searches, or one addition (which may grow the index under the searches' feet).

    A waiting writer holds back new readers, so a steady stream of searches cannot starve ``AddItem``.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._readers = 0
        self._writer = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._condition:
            self._condition.wait_for(lambda: not self._writer)
            self._readers += 1
        try:
            yield
        finally:
            with self._condition:
                self._readers -= 1
                if not self._readers:
                    self._condition.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._condition:
            self._condition.wait_for(lambda: not self._writer)
            self._writer = True
            self._condition.wait_for(lambda: self._readers == 0)
        try:
            yield
        finally:
            with self._condition:
                self._writer = False
                self._condition.notify_all()


class AnnIndex:
    """HNSW (usearch) searched directly with the inner-product metric.

    Why not the exact MIPS → L2 reduction of Bachrach et al. (RecSys 2014), which this index used first: on
    the synthetic 1M-item catalog of the serving benchmark (HNSW M 16, ef-construction 100, ef-search 400)
    recall@10 against exact search was 0.933 with the reduction and 0.981 with the inner-product graph
    (0.82 vs 1.42 ms per 200-candidate search; at 200k items both were >= 0.995), and an item added later
    needs no norm headroom. docs/serving.md has the numbers.

    Why usearch: hnswlib and faiss-cpu reached the same recall and latency in our measurement
    (docs/serving.md), but hnswlib ships no wheel (a C++ toolchain at install) and faiss-cpu is 66 MB and
    needs a lock around every add; usearch is an 11 MB wheel. Searches run concurrently; an addition (which
    may grow the index) takes the lock exclusively for its ~1 ms.
    """

    def __init__(self, rows: np.ndarray, settings: ServeSettings, order: np.ndarray | None = None) -> None:
        """``order``: the rows' insertion order (``locality_order``), when the caller already has it."""
        from usearch.index import Index

        self.settings = settings
        self.width = SearchWidth(settings.hnsw_ef_search or settings.candidates,  # build_index tunes it
                                 degree=settings.hnsw_m)
        self._index = Index(ndim=int(rows.shape[1]), metric="ip", dtype="f32",
                            connectivity=settings.hnsw_m, expansion_add=settings.hnsw_ef_construction,
                            expansion_search=self.width.ef)
        if order is None:
            order = locality_order(rows, settings.hnsw_order_clusters, settings.seed)
        for start in range(0, len(order), ADD_CHUNK):  # reordered rows are copied a chunk at a time
            keys = order[start:start + ADD_CHUNK]
            self._index.add(keys, np.ascontiguousarray(rows[keys], dtype=FLOAT),
                            threads=settings.index_threads)
        self._lock = SharedExclusiveLock()

    def __len__(self) -> int:
        return len(self._index)

    @staticmethod
    def _query(query: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(query, dtype=FLOAT)

    def search(self, query: np.ndarray, count: int, size: int) -> np.ndarray:
        with self._lock.shared():
            if count <= 0 or not len(self._index):
                return np.zeros(0, dtype=np.int64)
            found = self._index.search(self._query(query), count, threads=1).keys.astype(np.int64)
        return found[found < size]

    def add(self, rows: np.ndarray, first: int) -> None:
        with self._lock.exclusive():
            self._index.add(np.arange(first, first + len(rows)), np.ascontiguousarray(rows, dtype=FLOAT),
                            threads=1)

    def set_search_width(self, ef: int) -> None:
        """Change ef-search on the built index (the benchmark sweeps it without rebuilding)."""
        with self._lock.exclusive():
            self._index.expansion_search = ef  # type: ignore[misc]  # usearch defines the setter; mypy misreads it


def locality_order(rows: np.ndarray, clusters: int, seed: int) -> np.ndarray:
    """The order in which to add ``rows`` to HNSW (the keys stay the row numbers): a seeded random 5 % of
    them first, then the rest grouped by k-means cluster.

    Why grouped: usearch lays nodes out in insertion order, and a search reads the vector and links of every
    node it visits. Added in catalog order, neighbours in the collaborative space lie anywhere in tens or
    hundreds of MB; under load, with gRPC and the load generator sharing the caches, a 200-candidate search
    at 100k items cost 245 µs of CPU against ~100 µs in a tight loop. Grouped, nearby items sit together.
    Why a random share first: a graph built in cluster order alone lost recall at 1M items (recall@10
    0.944 against 0.973 at ef 200, M 16), as each cluster was linked only to the clusters inserted before
    it; a random backbone keeps the long-range links (0.974–0.976 with 2, 5 or 10 % of the rows). Measured on
    the synthetic catalogs (docs/serving.md, session 13): at 1M items the service builds its index in 32 s
    against 71–77 s and serves p50 / p99 0.42–0.46 / 0.64–0.79 ms against 0.64 / 1.03 ms, at the same
    recall@10 (0.974 against 0.975 on 1,000 queries).
    """
    n = len(rows)
    if clusters < 2 or n <= clusters:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    sample = np.asarray(rows[np.sort(rng.choice(n, min(n, ORDER_SAMPLE), replace=False))], dtype=FLOAT)
    centroids = sample[rng.choice(len(sample), clusters, replace=False)].copy()
    for _ in range(ORDER_ITERATIONS):
        nearest = nearest_centroid(sample, centroids)
        counts = np.bincount(nearest, minlength=clusters)
        sums = np.zeros_like(centroids)
        np.add.at(sums, nearest, sample)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
    grouped = np.argsort(nearest_centroid(rows, centroids), kind="stable")
    backbone = rng.choice(n, int(n * BACKBONE_SHARE), replace=False)
    rest = np.ones(n, dtype=bool)
    rest[backbone] = False
    return np.concatenate([backbone, grouped[rest[grouped]]])


def nearest_centroid(rows: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of each row's nearest centroid (squared L2), in blocks of ``ASSIGN_CHUNK`` rows."""
    out = np.empty(len(rows), dtype=np.int64)
    norms = (centroids**2).sum(axis=1)
    for start in range(0, len(rows), ASSIGN_CHUNK):
        block = np.asarray(rows[start:start + ASSIGN_CHUNK], dtype=FLOAT)
        out[start:start + len(block)] = (norms - 2.0 * block @ centroids.T).argmin(axis=1)
    return out


def exact_top(rows: np.ndarray, queries: np.ndarray, count: int) -> np.ndarray:
    """[len(queries), count]: each query's ``count`` best rows by inner product (unordered), in chunks."""
    count = min(count, len(rows))
    out = np.empty((len(queries), count), dtype=np.int64)
    for start in range(0, len(queries), TRUTH_CHUNK):
        scores = queries[start:start + TRUTH_CHUNK] @ rows.T
        out[start:start + TRUTH_CHUNK] = np.argpartition(-scores, count - 1, axis=1)[:, :count]
    return out


def recall_at_k(index: CandidateIndex, queries: np.ndarray, truth: np.ndarray, size: int) -> float:
    """Mean share of each query's exact top-k (``truth`` rows) that the index returns in its own top-k."""
    k = truth.shape[1]
    found = [len(np.intersect1d(index.search(query, k, size), want)) for query, want in
             zip(queries, truth, strict=True)]
    return float(np.mean(found)) / k if found else 1.0


def tune_search_width(index: AnnIndex, queries: np.ndarray, truth: np.ndarray, settings: ServeSettings
                      ) -> SearchWidth:
    """The smallest ef among ``SEARCH_WIDTH_STEPS`` × candidates whose recall@10 against the exact top-10
    (``truth``) reaches ``hnsw_recall_target``. If none does: the smallest ef within one hit of the best
    recall seen: a wider beam often finds nothing more (the graph, not the beam, is what falls short)."""
    size, hit = len(index), 1.0 / (RECALL_K * max(len(queries), 1))
    tried = []
    for step in SEARCH_WIDTH_STEPS:
        ef = round(settings.candidates * step)
        index.set_search_width(ef)
        tried.append(SearchWidth(ef, recall_at_k(index, queries, truth, size), settings.hnsw_recall_target,
                                 degree=index.width.degree))
        if not tried[-1].short_of_target:
            break
    best = max(width.recall_at_10 or 0.0 for width in tried)
    width = tried[-1] if not tried[-1].short_of_target else next(
        width for width in tried if (width.recall_at_10 or 0.0) >= best - hit + 1e-12)
    index.set_search_width(width.ef)
    return width


def build_index(rows: Growable, settings: ServeSettings, queries: np.ndarray) -> CandidateIndex:
    """Exact search below ``ann_min_items`` items, HNSW from there on (the benchmark's crossover).

    ``queries`` (the store's shoppers' retrieval queries) tune the index unless ``hnsw_ef_search`` fixes the
    beam width: the beam first (``tune_search_width``), then, if no beam reaches the recall target, the graph
    degree, rebuilding with 2× and 4× ``hnsw_m``. Measured on the trained ML-100K model (store 0, every item
    indexed): with M 16 recall@10 stayed at 0.90–0.95 whatever the beam (ef 200 to 1000, ef-construction 100
    or 400); M 32 gave 0.997 and M 64 1.0. On the synthetic catalogs M 16 already reaches the target, so they
    pay no rebuild.
    """
    if len(rows) < settings.ann_min_items:
        return ExactIndex(rows)
    if settings.hnsw_ef_search or not len(queries):
        return AnnIndex(rows.view(), settings)
    order = locality_order(rows.view(), settings.hnsw_order_clusters, settings.seed)  # once for every rebuild
    started = time.perf_counter()  # the tuning's cost: the exact top-10s, the searches and any rebuild
    truth = exact_top(rows.view(), queries, RECALL_K)
    first_build_s = 0.0  # what building the index costs anyway; the rest is the tuning's cost
    for step in DEGREE_STEPS:
        built = time.perf_counter()
        index = AnnIndex(rows.view(), settings.replace(hnsw_m=settings.hnsw_m * step), order)
        first_build_s = first_build_s or time.perf_counter() - built
        width = tune_search_width(index, queries, truth, settings)
        if not width.short_of_target:
            break
    index.width = dataclasses.replace(width, tuning_s=time.perf_counter() - started - first_build_s)
    log.info("HNSW M %d, ef-search %d: recall@10 %.3f against exact search on %d shoppers (target %.3f, "
             "tuned in %.1f s)", width.degree, width.ef, width.recall_at_10, len(queries), width.target,
             index.width.tuning_s)
    if width.short_of_target:
        log.warning("HNSW recall@10 %.3f is below --hnsw-recall-target %.3f on this model's shoppers even "
                    "with M %d: start from a larger --hnsw-m, or set --ann-min-items above the catalog size "
                    "for exact search", width.recall_at_10, width.target, width.degree)
    return index


def retrieval_queries(user_gmf: np.ndarray, gmf_output_weight: np.ndarray) -> np.ndarray:
    """[u_g ⊙ w_g, 1] per row of ``user_gmf``: its inner product with an item's [i_g, bias] is the GMF + bias
    share of the logit."""
    queries = np.ones((len(user_gmf), user_gmf.shape[1] + 1), dtype=FLOAT)
    queries[:, :-1] = user_gmf * gmf_output_weight
    return queries


def retrieval_query(user_gmf: np.ndarray, gmf_output_weight: np.ndarray) -> np.ndarray:
    """One shopper's query (``retrieval_queries`` of one row)."""
    return retrieval_queries(user_gmf[None], gmf_output_weight)[0]
