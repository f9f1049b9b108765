"""Two-stage ranking: inner-product retrieval of candidates, then re-ranking by the full NeuMF.

NeuMF's logit is ``w_g · (u_g ⊙ i_g) + MLP([u_m, i_m]) + b (+ item bias)``. The GMF part and the bias are an
inner product: ``[u_g ⊙ w_g, 1] · [i_g, bias_i]``. Stage one retrieves the items with the largest such inner
product — exactly (NumPy) for small catalogs, with an inverted-file index of k-means clusters
(``ClusterIndex``) from ``ann_min_items`` on — in this (gmf_dim + 1)-dimensional collaborative space, never
the 384-d text space. Stage two scores the candidates with the complete model (``shared.cold_start.score``),
MLP included, which is what the final order follows. Catalogs up to ``score_all_below`` items skip stage one:
there NeuMF scores every item as fast as the two stages run
(``simulations/benchmarks/score_all_crossover.py``), and ranks exactly like the evaluation does. Above it
scoring everything costs more with each item (3.2× the two stages at ML-100K's 1,682 items, 6.3× at 4,096),
while the lists stay the same (identical top-10s for all 943 shoppers of the default ML-100K model).

The index, its parameters and its recall@10 against exact retrieval are measured by
``simulations/benchmarks/serve_latency.py`` and, behind gRPC, ``serve_grpc_load.py`` (docs/serving.md). The
number of clusters probed is tuned when the index is built, on the store's own shoppers (``tune_probes``):
recall depends on where the queries point (a trained model's GMF output weights can tilt every query towards
the bias axis), so no fixed count is safe for every model, and probing more than needed costs every request.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from client.serving.catalog import Growable
from client.serving.settings import ServeSettings

FLOAT = np.float32
RECALL_K = 10                 # the recall@10 the tuning and the benchmarks report
CLUSTERS_PER_ROOT = 4         # clusters = 4·√items unless --ann-clusters says (1,265 at 100k, 4,000 at 1M)
FIRST_PROBES = 4              # the tuning's first rung of clusters probed per search ...
PROBE_GROWTH = 1.5            # ... each next rung 1.5× the last, up to every cluster (exact search)
UNTUNED_PROBE_SHARE = 1 / 64  # probes without tuning (no shoppers to tune on): this share of the clusters
KMEANS_SAMPLE = 32            # rows per cluster the centroids are fitted on (all rows if fewer)
KMEANS_ITERATIONS = 8         # Lloyd iterations: the clusters need only be compact, not optimal
TRUTH_CHUNK = 16              # queries per exact product: 16 x 1M items x 4 B = 64 MB
ASSIGN_CHUNK = 16_384         # rows per distance block up to 1,024 centroids (fewer beyond): 64 MB at most

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeWidth:
    """Clusters probed per search, out of how many, and the recall@10 reached on the store's shoppers
    (None: set by hand, not tuned)."""

    probes: int
    clusters: int
    recall_at_10: float | None = None
    target: float | None = None
    tuning_s: float = 0.0

    @property
    def short_of_target(self) -> bool:
        return self.recall_at_10 is not None and self.target is not None and self.recall_at_10 < self.target


class CandidateIndex(Protocol):
    @property
    def width(self) -> ProbeWidth | None:
        """The clusters probed and the recall they reached (None: exact search probes everything)."""
        ...

    def search(self, query: np.ndarray, count: int, size: int) -> np.ndarray:
        """Indices (< size) of up to ``count`` items with the largest inner product with ``query``, in no
        particular order (re-ranking orders them)."""
        ...

    def add(self, rows: np.ndarray, first: int) -> None:
        """Index rows that were appended at catalog indices ``first``, ``first + 1``, ..."""
        ...


def best_unordered(scores: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` largest scores in no particular order: candidates for re-ranking, which
    orders them itself (sorting 200 of them was ~2 % of the event loop's work under load, session 15)."""
    if count >= len(scores):
        return np.arange(len(scores))
    return np.argpartition(-scores, count - 1)[:count] if count > 0 else np.zeros(0, dtype=np.int64)


def top_indices(scores: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` largest scores, best first (``best_unordered``, then a sort of the few)."""
    part = best_unordered(scores, count)
    return part[np.argsort(-scores[part], kind="stable")].astype(np.int64)


class ExactIndex:
    """Exact inner-product search over the catalog's retrieval rows (no extra memory, no build)."""

    width: ProbeWidth | None = None

    def __init__(self, rows: Growable) -> None:
        self.rows = rows

    def search(self, query: np.ndarray, count: int, size: int) -> np.ndarray:
        return best_unordered(self.rows.view(size) @ query, count)

    def add(self, rows: np.ndarray, first: int) -> None:
        """Nothing to do: ``search`` reads the growing rows directly."""


class ClusterIndex:
    """An inverted file: the items split into k-means clusters, each cluster's rows stored together; a search
    ranks the centroids by inner product with the query, then scores exactly the rows of the ``probes`` best
    clusters and returns their best ``count``.

    Why not a graph index: this one replaced HNSW (usearch) in session 15. Both reached recall@10 ≥ 0.97
    against exact search, but under the gRPC load (which shares two cores and their caches with gRPC and the
    load generator) a 200-candidate HNSW search cost ~0.3 ms against ~0.1 ms in a tight loop: it reads the
    links and vector of every node it visits, scattered over tens of MB. Here a search reads a few contiguous
    blocks, which the prefetcher streams. Measured behind gRPC at 100k items (docs/serving.md, "Session 15"):
    0.73–0.75 against 0.94–0.95 ms of server CPU per request, 1,391–1,438 against 1,101–1,103 requests/s; in
    process at 1M items p50 / p99 0.33 / 0.57 ms at recall@10 0.984 (14 of 4,000 clusters probed) against
    HNSW's 0.42 / 0.64 ms at 0.971. Why not faiss' ``IndexIVFFlat``, the same structure: measured behind gRPC
    it served as many requests (1,244 / 1,275 against 1,340 / 1,247 requests/s at 100k), it would add a 65 MB
    wheel to the partner image, and its ``add`` must not run during a search.

    A search probes more clusters than ``probes`` when those hold fewer than ``count`` rows (clusters of a
    small catalog), so re-ranking always sees the candidate pool it asked for. Searches take no lock. An
    addition replaces its cluster's (rows, keys) pair with one reference assignment, so a concurrent search
    sees the cluster before or after it, never half of it; additions serialise among themselves.
    """

    def __init__(self, rows: np.ndarray, settings: ServeSettings) -> None:
        rows = np.asarray(rows, dtype=FLOAT)
        clusters = settings.ann_clusters or round(CLUSTERS_PER_ROOT * math.sqrt(len(rows)))
        clusters = max(1, min(clusters, len(rows)))
        self._centroids = kmeans(rows, clusters, settings.seed)
        assigned = nearest_centroid(rows, self._centroids)
        order = np.argsort(assigned, kind="stable")
        bounds = np.searchsorted(assigned[order], np.arange(clusters + 1))
        self._lists = [(np.ascontiguousarray(rows[order[a:b]]), order[a:b].astype(np.int64))
                       for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)]
        self._sizes = np.diff(bounds)
        self._size = len(rows)
        self._adding = threading.Lock()
        probes = settings.ann_probes or max(FIRST_PROBES, round(clusters * UNTUNED_PROBE_SHARE))
        self.width = ProbeWidth(min(probes, clusters), clusters)

    def __len__(self) -> int:
        return self._size

    def search(self, query: np.ndarray, count: int, size: int) -> np.ndarray:
        lists = self._lists
        scores = self._centroids @ query
        ranked = best_unordered(scores, self.width.probes)
        if self._sizes[ranked].sum() < count:  # small clusters (a small catalog): probe on, best first,
            ranked = np.argsort(-scores, kind="stable")  # until the pool holds ``count`` rows
            enough = int(np.searchsorted(np.cumsum(self._sizes[ranked]), count)) + 1
            ranked = ranked[:max(self.width.probes, enough)]
        probed = [lists[c] for c in ranked.tolist()]
        rows = np.concatenate([block for block, _ in probed])
        keys = np.concatenate([key for _, key in probed])
        found = keys[best_unordered(rows @ query, count)]
        return found[found < size]

    def add(self, rows: np.ndarray, first: int) -> None:
        rows = np.asarray(rows, dtype=FLOAT)
        with self._adding:
            for offset, cluster in enumerate(nearest_centroid(rows, self._centroids).tolist()):
                block, keys = self._lists[cluster]
                self._lists[cluster] = (np.concatenate([block, rows[offset:offset + 1]]),
                                        np.append(keys, first + offset))
                self._sizes[cluster] += 1
            self._size += len(rows)

    def set_probes(self, probes: int) -> None:
        """Probe ``probes`` clusters per search from now on (the tuning and the benchmark's sweep)."""
        self.width = ProbeWidth(max(1, min(probes, self.width.clusters)), self.width.clusters)


def kmeans(rows: np.ndarray, clusters: int, seed: int) -> np.ndarray:
    """[clusters, dim] centroids: Lloyd's algorithm on a seeded sample of ``KMEANS_SAMPLE`` rows per
    cluster, started from sampled rows (so the same catalog gives the same index at every start)."""
    rng = np.random.default_rng(seed)
    sample_size = min(len(rows), clusters * KMEANS_SAMPLE)
    sample = np.asarray(rows[np.sort(rng.choice(len(rows), sample_size, replace=False))], dtype=FLOAT)
    centroids = sample[rng.choice(len(sample), clusters, replace=False)].copy()
    for _ in range(KMEANS_ITERATIONS):
        nearest = nearest_centroid(sample, centroids)
        counts = np.bincount(nearest, minlength=clusters)
        sums = np.zeros_like(centroids)
        np.add.at(sums, nearest, sample)
        filled = counts > 0  # an emptied cluster keeps its centroid (it may still win items)
        centroids[filled] = sums[filled] / counts[filled, None]
    return centroids


def nearest_centroid(rows: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of each row's nearest centroid (squared L2), in blocks of ``ASSIGN_CHUNK`` rows."""
    out = np.empty(len(rows), dtype=np.int64)
    norms = (centroids**2).sum(axis=1)
    chunk = max(1, ASSIGN_CHUNK * 1024 // max(len(centroids), 1024))
    for start in range(0, len(rows), chunk):
        block = np.asarray(rows[start:start + chunk], dtype=FLOAT)
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


def probe_rungs(clusters: int) -> list[int]:
    """The probe counts the tuning tries: ``FIRST_PROBES``, then ×``PROBE_GROWTH`` each, ending with every
    cluster (exact search, which always reaches the target)."""
    rungs = [min(FIRST_PROBES, clusters)]
    while rungs[-1] < clusters:
        rungs.append(min(clusters, max(rungs[-1] + 1, round(rungs[-1] * PROBE_GROWTH))))
    return rungs


def tune_probes(index: ClusterIndex, queries: np.ndarray, truth: np.ndarray, settings: ServeSettings
                ) -> ProbeWidth:
    """The smallest of ``probe_rungs`` whose recall@10 against the exact top-10 (``truth``) reaches
    ``ann_recall_target``; probing every cluster is exact search, so some rung always does."""
    size = len(index)
    width = index.width
    for probes in probe_rungs(index.width.clusters):
        index.set_probes(probes)
        width = dataclasses.replace(index.width, recall_at_10=recall_at_k(index, queries, truth, size),
                                    target=settings.ann_recall_target)
        if not width.short_of_target:
            break
    index.width = width
    return width


def build_index(rows: Growable, settings: ServeSettings, queries: np.ndarray) -> CandidateIndex:
    """Exact search below ``ann_min_items`` items, the cluster index from there on (the benchmark's
    crossover). ``queries`` (the store's shoppers' retrieval queries) tune the clusters probed unless
    ``ann_probes`` fixes them."""
    if len(rows) < settings.ann_min_items:
        return ExactIndex(rows)
    started = time.perf_counter()
    index = ClusterIndex(rows.view(), settings)
    built_s = time.perf_counter() - started
    if settings.ann_probes or not len(queries):
        log.info("cluster index: %d items in %d clusters, built in %.1f s, %d probed per search (not tuned)",
                 len(index), index.width.clusters, built_s, index.width.probes)
        return index
    truth = exact_top(rows.view(), queries, RECALL_K)
    width = tune_probes(index, queries, truth, settings)
    index.width = dataclasses.replace(width, tuning_s=time.perf_counter() - started - built_s)
    log.info("cluster index: %d items in %d clusters, built in %.1f s; %d probed per search reach recall@10 "
             "%.3f against exact search on %d shoppers (target %.3f, tuned in %.1f s)", len(index),
             width.clusters, built_s, width.probes, width.recall_at_10, len(queries), width.target,
             index.width.tuning_s)
    if width.short_of_target:  # only ties at the k-th score can keep even exact search below it
        log.warning("cluster index recall@10 %.3f is below --ann-recall-target %.3f even probing every "
                    "cluster (ties in the shoppers' exact top-10)", width.recall_at_10, width.target)
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
