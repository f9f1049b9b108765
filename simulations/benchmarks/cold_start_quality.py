"""Cold-start quality on ML-100K: new items from text, new users from clicks or a text query, with baselines.

Protocol: simulations/cold_start_protocol.py (docs/cold_start.md explains how to read the table). Per seed,
10 % of items and 10 % of users are held out with all their interactions; NeuMF is trained centrally on the
rest (the same trainer as ``fedrec centralized``), once per item tower. Hyperparameters of the fold-in and of
the text query's popularity weight are chosen on each cold user's validation item, never on the test item.
Ends with one JSON line.

    .venv/bin/python -m simulations.benchmarks.cold_start_quality --seeds 0 1 2 --towers text id --epochs 20 \
        [--title-dropout 0.5]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from server.cold_start import fit_mapping
from shared.cold_start import (
    ItemMapping,
    ItemVectors,
    QueryPlacement,
    average_user,
    catalog_item_vectors,
    choose_ridge,
    fit_item_mapping,
    fit_user_from_clicks,
    rank_for_text,
    score,
    user_vectors_of,
)
from shared.config import from_mapping, parse_assignment
from shared.data import Dataset
from shared.model import NeuMF
from shared.text_encoder import encode_catalog
from shared.workload import load_workload
from simulations.centralized import train_model
from simulations.cold_start_protocol import (
    ColdHoldout,
    ColdUser,
    K,
    category_baselines,
    category_year_features,
    cold_user_histories,
    held_out_candidates,
    hit_at_k,
    hold_out,
    interaction_matrix,
    rank_metrics,
    text_without_title,
    validation_test_halves,
)

CLICKS = (1, 3, 5)
FOLD_IN_STEPS = 30
FOLD_IN_RATES = (0.003, 0.01, 0.05, 0.2)
QUERY_POPULARITY_WEIGHTS = (0.0, 0.05, 0.2, 1.0, 3.0)
QUERY_GENRES = 2
PUBLISHED = "text → item vectors (published mapping)"
COMPONENT_GRID = (0, 8, 16, 32, 64, 128)  # cold-start-text-components tried; 0 = the whole embedding
VALID, TEST = f"recall@{K} validation half", f"recall@{K} test half"
Table = dict[str, dict[str, float]]


def components_row(components: int) -> str:
    return (f"published mapping, text through its {components} leading directions" if components else
            "published mapping, whole text embedding")


def item_rows(model: NeuMF, holdout: ColdHoldout, text: np.ndarray, bare_text: np.ndarray,
              structured: np.ndarray, seed: int, published: ItemMapping, components: int
              ) -> dict[str, ItemVectors]:
    """Placed vectors of the cold items under each mapping (all fitted on warm items only); ``published`` is
    the run's mapping, fitted with ``components`` directions, which the sweep reuses instead of refitting."""
    warm, cold = holdout.warm_items, holdout.cold_items
    targets = catalog_item_vectors(model)

    def ridge_fit(features: np.ndarray) -> ItemVectors:
        ridge = choose_ridge(features[warm], targets, seed)
        return fit_item_mapping(features[warm], targets, ridge).place(features[cold])

    placed_published = published.place(text[cold])
    sweep = {components_row(m): placed_published if m == components
             else fit_mapping(model, text[warm], seed, m).place(text[cold]) for m in COMPONENT_GRID}
    return {PUBLISHED: placed_published,
            **sweep,
            "text → item vectors, plain ridge": ridge_fit(text),
            "text without title → item vectors": ridge_fit(bare_text),
            "category + year → item vectors": ridge_fit(structured),
            "text + category + year → item vectors": ridge_fit(np.concatenate([text, structured], axis=1))}


def evaluate_items(model: NeuMF, holdout: ColdHoldout, placed: dict[str, ItemVectors], seed: int
                   ) -> tuple[Table, Table]:
    """(user → cold items table, cold item → users table)."""
    n_users = holdout.warm.split.n_users
    truth = interaction_matrix(holdout.full, holdout.warm_users, holdout.cold_items)
    every_user = np.arange(n_users)
    rng = np.random.default_rng(seed)
    users = user_vectors_of(model, every_user)
    scores: dict[str, np.ndarray] = {"random": rng.random(truth.shape)}
    scores.update(category_baselines(holdout, every_user, seed))
    for name, vectors in placed.items():
        scores[name] = score(model, users, vectors)
    mean_user = score(model, average_user(model), placed[PUBLISHED])
    scores["text mapping, not personalised (average user)"] = np.tile(mean_user, (n_users, 1))
    halves = validation_test_halves(len(holdout.cold_items), seed)
    to_items = {name: items_metrics(s, truth, halves) for name, s in scores.items()}
    activity = np.bincount(holdout.warm.split.train_users, minlength=n_users).astype(np.float64)
    to_users_scores = {"random": scores["random"], "users by activity": np.tile(activity[:, None],
                                                                               (1, truth.shape[1]))}
    for name in ("user's category affinity", "category + year → item vectors", PUBLISHED):
        to_users_scores[name] = scores[name]
    to_users = {name: rank_metrics(s.T, truth.T) for name, s in to_users_scores.items()}
    return to_items, to_users


def items_metrics(scores: np.ndarray, truth: np.ndarray, halves: tuple[np.ndarray, np.ndarray]
                  ) -> dict[str, float]:
    """Ranking the cold items for each user who interacted with one: all of them, and Recall@10 within
    the validation and the test half (each half ranked on its own, for its own users)."""
    def on(columns: np.ndarray) -> dict[str, float]:
        users = np.flatnonzero(truth[:, columns].any(1))
        return rank_metrics(scores[np.ix_(users, columns)], truth[np.ix_(users, columns)])

    out = on(np.arange(truth.shape[1]))
    valid, test = halves
    out[VALID], out[TEST] = on(valid)[f"recall@{K}"], on(test)[f"recall@{K}"]
    return out


def genre_query(holdout: ColdHoldout, user: ColdUser, clicks: int) -> str:
    """'Comedy and Romance movies': the top genres of the user's first ``clicks`` items.

    ML-100K has no queries; this stands for a new user telling us their taste, built only from what they did
    before the validation and test items (no look at the items being predicted)."""
    counts: dict[str, int] = defaultdict(int)
    for item in user.history[:clicks]:
        for genre in holdout.full.categories[holdout.warm_items[item]]:
            counts[genre] += 1
    return query_text(sorted(counts, key=lambda g: (-counts[g], g))[:QUERY_GENRES])


def query_text(genres: list[str]) -> str:
    return " and ".join(genres) + " movies"


def all_queries(dataset: Dataset) -> list[str]:
    """Every query ``genre_query`` can build (one or two genres, ordered), so they can be encoded up front."""
    genres = sorted({g for cs in dataset.categories for g in cs})
    pairs = [query_text(list(pair)) for pair in itertools.permutations(genres, 2)]
    return [query_text([g]) for g in genres] + pairs


@dataclass(frozen=True)
class TextInputs:
    """Text embeddings the benchmark needs: catalog text, title-less text, every possible query."""

    text: np.ndarray
    bare: np.ndarray
    queries: dict[str, np.ndarray]

    @classmethod
    def build(cls, dataset: Dataset, setting: str, path: Path | None) -> TextInputs:
        """Encode (disk-cached by text), or load ``path`` when it exists (a machine without the encoder)."""
        if path is not None and path.exists():
            with np.load(path, allow_pickle=False) as data:
                return cls(data["text"], data["bare"], dict(zip(data["query_texts"].tolist(),
                                                                data["query_embeddings"], strict=True)))
        text = encode_catalog([dataset.item_text(i) for i in range(dataset.n_items)], setting)
        bare = encode_catalog([text_without_title(dataset, i) for i in range(dataset.n_items)], setting)
        queries = all_queries(dataset)
        query_embeddings = encode_catalog(queries, setting)
        if path is not None:
            np.savez(path, allow_pickle=False, text=text, bare=bare, query_texts=np.array(queries),
                     query_embeddings=query_embeddings)
        return cls(text, bare, dict(zip(queries, query_embeddings, strict=True)))


def evaluate_users(model: NeuMF, holdout: ColdHoldout, users: list[ColdUser], text: np.ndarray,
                   query_embeddings: np.ndarray, mapping: ItemMapping, eval_seed: int) -> Table:
    """HR@10 (sampled and full) after 1/3/5 clicks: popularity, fold-in, text query; settings picked on the
    validation item."""
    n_items = len(holdout.warm_items)
    popularity = np.bincount(holdout.warm.split.train_items, minlength=n_items).astype(np.float64)
    catalog = catalog_item_vectors(model)
    start = average_user(model)
    warm_text = text[holdout.warm_items]

    def hits(method: Any, which: int) -> dict[int, tuple[float, float]]:
        out = {}
        for n in CLICKS:
            pairs = []
            for index, user in enumerate(users):
                clicked = user.history[:n]
                scores = method(index, user, clicked)
                pairs.append(hit_at_k(scores, int(user.history[which]), clicked,
                                      held_out_candidates(user, n_items, eval_seed, which)))
            out[n] = (float(np.mean([p[0] for p in pairs])), float(np.mean([p[1] for p in pairs])))
        return out

    def fold_in(rate: float) -> Any:
        def method(index: int, user: ColdUser, clicked: np.ndarray) -> np.ndarray:
            vectors = fit_user_from_clicks(model, catalog, clicked, steps=FOLD_IN_STEPS, learning_rate=rate,
                                           seed=user.user, start=start)
            return score(model, vectors, catalog)[0]
        return method

    def query(weight: float) -> Any:
        def method(index: int, user: ColdUser, clicked: np.ndarray) -> np.ndarray:
            return rank_for_text(query_embeddings[index], warm_text, popularity, weight)
        return method

    def best(methods: dict[float, Any]) -> tuple[float, dict[int, tuple[float, float]]]:
        """The method whose mean validation HR@10 over 1/3/5 clicks is highest, evaluated on the test item."""
        valid = {key: np.mean([h[0] for h in hits(m, -2).values()]) for key, m in methods.items()}
        chosen = max(valid, key=lambda key: valid[key])
        return chosen, hits(methods[chosen], -1)

    placed_queries = mapping.place(query_embeddings)

    def query_as_click(rate: float, with_clicks: bool) -> Any:
        def method(index: int, user: ColdUser, clicked: np.ndarray) -> np.ndarray:
            if not with_clicks:  # the API's measured-best query ranking
                placement = QueryPlacement(model, mapping, catalog, start, FOLD_IN_STEPS, rate, user.user)
                return rank_for_text(query_embeddings[index], warm_text, placement=placement)
            extended = catalog.concat(placed_queries.take(np.array([index])))
            vectors = fit_user_from_clicks(model, extended, np.append(clicked, n_items), steps=FOLD_IN_STEPS,
                                           learning_rate=rate, seed=user.user, start=start)
            return score(model, vectors, catalog)[0]
        return method

    rate, folded = best({r: fold_in(r) for r in FOLD_IN_RATES})
    weight, queried = best({w: query(w) for w in QUERY_POPULARITY_WEIGHTS})
    query_rate, query_placed = best({r: query_as_click(r, False) for r in FOLD_IN_RATES})
    rows = {"popularity": (hits(lambda i, u, c: popularity, -1), {}),
            "fold-in of the clicks": (folded, {"chosen lr": rate}),
            "text query: text similarity + popularity": (queried, {"chosen weight": weight}),
            "text query placed by the mapping, folded in as one click":
                (query_placed, {"chosen lr": query_rate}),
            "fold-in of the clicks + the placed query as one more click":
                (hits(query_as_click(rate, True), -1), {"chosen lr": rate})}
    return {name: {**{f"hr@{K}@{n}clicks{suffix}": value[i] for n, value in per_n.items()
                      for i, suffix in enumerate(("", "_full"))}, **chosen}
            for name, (per_n, chosen) in rows.items()}


def title_dropout(text: np.ndarray, bare: np.ndarray, holdout: ColdHoldout, rate: float, tower: str
                  ) -> Callable[[np.random.Generator], np.ndarray] | None:
    """Per epoch, each warm item trains on its title-less text with probability ``rate`` (a probe: does a text
    tower that cannot lean on titles place unseen items better?)."""
    if rate <= 0 or tower == "id":
        return None
    full, without = text[holdout.warm_items], bare[holdout.warm_items]
    return lambda rng: np.where((rng.random(len(full)) < rate)[:, None], without, full)


def run_seed(seed: int, args: argparse.Namespace) -> dict[str, Table]:
    towers, epochs = args.towers, args.epochs
    base = from_mapping({"seed": seed, "torch-threads": 1, "device": args.device,
                         **dict(parse_assignment(a) for a in args.set)})
    dataset = load_workload(base).dataset
    holdout = hold_out(dataset, seed, args.item_share, args.user_share, base.eval_seed)
    inputs = TextInputs.build(dataset, base.text_encoder, args.embeddings)
    text, bare = inputs.text, inputs.bare
    structured = category_year_features(dataset)
    users = cold_user_histories(holdout, max(CLICKS))
    query_embeddings = np.stack([inputs.queries[genre_query(holdout, u, max(CLICKS))] for u in users])
    out: dict[str, Table] = {}
    for tower in towers:
        config = base.replace(item_tower=tower)
        started = time.perf_counter()
        features = text[holdout.warm_items] if tower != "id" else None
        dropout = title_dropout(text, bare, holdout, args.title_dropout, tower)
        model, warm_metrics = train_model(config, holdout.warm, features, epochs, verbose=False,
                                          epoch_features=dropout)
        mapping = fit_mapping(model, text[holdout.warm_items], seed, config.cold_start_text_components)
        placed = item_rows(model, holdout, text, bare, structured, seed, mapping,
                           config.cold_start_text_components)
        to_items, to_users = evaluate_items(model, holdout, placed, seed)
        cold_users = evaluate_users(model, holdout, users, text, query_embeddings, mapping, base.eval_seed)
        print(f"  trained in {warm_metrics['seconds']}s", flush=True)
        out[f"{tower}/items"] = to_items
        out[f"{tower}/item_to_users"] = to_users
        out[f"{tower}/users"] = cold_users
        out[f"{tower}/warm"] = {"model": {k: float(v) for k, v in warm_metrics.items()
                                          if k in (f"hr@{K}", f"ndcg@{K}", f"hr@{K}_full", "users")}}
        print(f"seed {seed} tower {tower}: {time.perf_counter() - started:.0f}s "
              f"({len(holdout.cold_items)} cold items, {len(users)} cold users)", flush=True)
    return out


def mean_tables(per_seed: list[dict[str, Table]]) -> dict[str, dict[str, dict[str, list[float]]]]:
    merged: dict[str, dict[str, dict[str, list[float]]]] = {}
    for tables in per_seed:
        for section, rows in tables.items():
            for row, metrics in rows.items():
                for metric, value in metrics.items():
                    merged.setdefault(section, {}).setdefault(row, {}).setdefault(metric, []).append(value)
    return merged


def print_tables(merged: dict[str, dict[str, dict[str, list[float]]]]) -> None:
    for section, rows in merged.items():
        metrics = [m for m in next(iter(rows.values())) if not m.startswith("chosen")]
        print(f"\n### {section}\n| method | " + " | ".join(metrics) + " |")
        print("|---" * (len(metrics) + 1) + "|")
        for row, values in rows.items():
            cells = [f"{np.mean(values[m]):.3f} ± {np.std(values[m]):.3f}" if len(values[m]) > 1
                     else f"{values[m][0]:.3f}" for m in metrics]
            chosen = "; ".join(f"{m}: {', '.join(f'{v:g}' for v in values[m])}"
                               for m in values if m not in metrics)
            print(f"| {row}{f' ({chosen})' if chosen else ''} | " + " | ".join(cells) + " |")


def goal_of(items: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The published mapping's Recall@10 over the user's category affinity's (goal ≥ 1.5), on all cold items
    and on the test half alone, and which number of text directions the validation half prefers."""
    affinity = items["user's category affinity"]
    ratio = items[PUBLISHED][f"recall@{K}"] / affinity[f"recall@{K}"]
    test_ratio = items[PUBLISHED][TEST] / affinity[TEST]
    sweep = [m for m in COMPONENT_GRID if components_row(m) in items]
    preferred = max(sweep, key=lambda m: items[components_row(m)][VALID]) if sweep else None
    return {"recall@10_vs_category_affinity": round(ratio, 3),
            "test_half_recall@10_vs_category_affinity": round(test_ratio, 3),
            "components_preferred_by_validation_half": preferred,
            "goal": 1.5, "met": ratio >= 1.5 and test_ratio >= 1.5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--towers", nargs="+", default=["text", "id"], choices=["text", "id", "hybrid"])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--item-share", type=float, default=0.1)
    parser.add_argument("--user-share", type=float, default=0.1)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--title-dropout", type=float, default=0.0,
                        help="probe: per epoch, the share of warm items trained on their title-less text")
    parser.add_argument("--embeddings", type=Path,
                        help="npz of the text inputs: loaded if present, else written")
    parser.add_argument("--out", type=Path, help="also write the per-seed tables here (JSON)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a run setting for every seed, e.g. cold-start-text-components=0")
    parser.add_argument("--merge", type=Path, nargs="+",
                        help="only merge per-seed table files written by --out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    if args.merge:
        per_seed = [t for path in args.merge for t in json.loads(path.read_text())["per_seed"]]
        args.seeds = sorted({s for path in args.merge for s in json.loads(path.read_text())["seeds"]})
        args.towers = sorted({section.split("/")[0] for tables in per_seed for section in tables})
    else:
        per_seed = [run_seed(s, args) for s in args.seeds]
    if args.out:
        args.out.write_text(json.dumps({"seeds": args.seeds, "per_seed": per_seed}))
    merged = mean_tables(per_seed)
    print_tables(merged)
    means = {section: {row: {m: round(float(np.mean(v)), 4) for m, v in metrics.items()}
                       for row, metrics in rows.items()} for section, rows in merged.items()}
    goal = {tower: goal_of(means[f"{tower}/items"])
            for tower in sorted({section.split("/")[0] for section in means})}
    print(json.dumps({"benchmark": "cold_start_quality", "seeds": args.seeds, "epochs": args.epochs,
                      "towers": args.towers, "goal": goal, "tables": means,
                      "seconds": round(time.perf_counter() - started, 1)}, ensure_ascii=False))


if __name__ == "__main__":
    main()
