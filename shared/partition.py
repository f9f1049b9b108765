"""Which store (federated client) holds which user.

Federated clients hold exactly the train interactions of their own users (PROTOCOL.md), so a partition is a
store index per user. Schemes range from realistic (stores named in users.csv) through IID to deliberately
non-IID (Dirichlet over a user attribute) and cross-device (one user per client).
"""

from __future__ import annotations

import numpy as np

from shared.data import Dataset

STORES_FILE = "stores-file"
IID = "iid"
DIRICHLET = "dirichlet"
ONE_USER_PER_CLIENT = "one-user-per-client"
PARTITION_SCHEMES = (STORES_FILE, IID, DIRICHLET, ONE_USER_PER_CLIENT)
DEFAULT_DIRICHLET_ALPHA = 0.5
UNKNOWN_CATEGORY = "unknown"
GENERATED_STORE_PREFIX = "store-"


def _check_scheme(scheme: str) -> None:
    if scheme not in PARTITION_SCHEMES:
        raise ValueError(f"unknown partition scheme {scheme!r}; choose one of {', '.join(PARTITION_SCHEMES)}")


def _check_num_stores(dataset: Dataset, scheme: str, num_stores: int) -> None:
    if num_stores < 1:
        raise ValueError(f"{scheme} partition needs num_stores >= 1, got {num_stores}")
    if num_stores > dataset.n_users:
        raise ValueError(f"{scheme} partition: num_stores ({num_stores}) exceeds the number of users "
                         f"({dataset.n_users}); every store needs at least one user")


def _file_stores(dataset: Dataset) -> tuple[tuple[str, ...], np.ndarray]:
    """Store names from users.csv, sorted, and each user's index into them."""
    if dataset.user_stores is None:
        raise ValueError(f"{STORES_FILE} partition needs users.csv (user_id,store) in {dataset.source}")
    names = tuple(sorted(set(dataset.user_stores)))
    index = {name: k for k, name in enumerate(names)}
    return names, np.array([index[name] for name in dataset.user_stores], dtype=np.int64)


def _interaction_categories(dataset: Dataset, vocabulary: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(user, category code) for every category of every interacted item: a join without Python loops."""
    code = {name: k for k, name in enumerate(vocabulary)}
    lengths = np.array([len(cats) for cats in dataset.categories], dtype=np.int64)
    flat = np.array([code[c] for cats in dataset.categories for c in cats], dtype=np.int64)
    item_starts = np.cumsum(lengths) - lengths
    repeats = lengths[dataset.items]
    first_of_run = np.repeat(np.cumsum(repeats) - repeats, repeats)
    offsets = np.arange(repeats.sum(), dtype=np.int64) - first_of_run
    categories = flat[np.repeat(item_starts[dataset.items], repeats) + offsets]
    return np.repeat(dataset.users, repeats), categories


def dominant_categories(dataset: Dataset) -> list[str]:
    """Each user's most frequent item category (ties: alphabetical first; no categories: 'unknown').

    This is the user attribute the Dirichlet scheme skews stores by, a proxy for taste-based store clientele.
    """
    vocabulary = sorted({c for cats in dataset.categories for c in cats})
    users, categories = _interaction_categories(dataset, vocabulary)
    width = max(len(vocabulary), 1)
    counts = np.bincount(users * width + categories, minlength=dataset.n_users * width)
    counts = counts.reshape(dataset.n_users, width)
    best = counts.argmax(axis=1)  # argmax takes the first maximum: vocabulary is sorted, so alphabetical
    has_any = counts.sum(axis=1) > 0
    return [vocabulary[k] if ok else UNKNOWN_CATEGORY
            for k, ok in zip(best.tolist(), has_any.tolist(), strict=True)]


def _iid(n_users: int, num_stores: int, rng: np.random.Generator) -> np.ndarray:
    stores = np.empty(n_users, dtype=np.int64)
    stores[rng.permutation(n_users)] = np.arange(n_users, dtype=np.int64) % num_stores
    return stores


def _fill_empty_stores(stores: np.ndarray, num_stores: int, rng: np.random.Generator) -> None:
    """Move random users out of the largest store until no store is empty (needs n_users >= num_stores)."""
    sizes = np.bincount(stores, minlength=num_stores)
    for empty in np.flatnonzero(sizes == 0).tolist():
        largest = int(sizes.argmax())
        mover = rng.choice(np.flatnonzero(stores == largest))
        stores[mover] = empty
        sizes[largest] -= 1
        sizes[empty] += 1


def _dirichlet(dataset: Dataset, num_stores: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    attribute = np.array(dominant_categories(dataset), dtype=object)
    stores = np.empty(dataset.n_users, dtype=np.int64)
    for value in sorted(set(attribute.tolist())):
        members = rng.permutation(np.flatnonzero(attribute == value))
        shares = rng.dirichlet(np.full(num_stores, alpha))
        cuts = np.round(np.cumsum(shares)[:-1] * members.size).astype(np.int64)
        for store, group in enumerate(np.split(members, cuts)):
            stores[group] = store
    _fill_empty_stores(stores, num_stores, rng)
    return stores


def partition_users(dataset: Dataset, scheme: str, num_stores: int, seed: int,
                    dirichlet_alpha: float = DEFAULT_DIRICHLET_ALPHA) -> np.ndarray:
    """int64 [n_users] store index per user under ``scheme`` (one of PARTITION_SCHEMES).

    ``num_stores`` is only used by "iid" and "dirichlet"; "stores-file" takes the stores from users.csv
    (sorted names → indices) and "one-user-per-client" makes one store per user. ``seed`` makes the random
    schemes reproducible.
    """
    _check_scheme(scheme)
    if scheme == STORES_FILE:
        return _file_stores(dataset)[1]
    if scheme == ONE_USER_PER_CLIENT:
        return np.arange(dataset.n_users, dtype=np.int64)
    _check_num_stores(dataset, scheme, num_stores)
    rng = np.random.default_rng(seed)
    if scheme == IID:
        return _iid(dataset.n_users, num_stores, rng)
    if not dirichlet_alpha > 0:
        raise ValueError(f"dirichlet_alpha must be > 0, got {dirichlet_alpha}")
    return _dirichlet(dataset, num_stores, dirichlet_alpha, rng)


def store_names(dataset: Dataset, scheme: str, num_stores: int) -> tuple[str, ...]:
    """Human-readable name of each store index that partition_users returns for the same arguments."""
    _check_scheme(scheme)
    if scheme == STORES_FILE:
        return _file_stores(dataset)[0]
    if scheme == ONE_USER_PER_CLIENT:
        return dataset.user_ids
    _check_num_stores(dataset, scheme, num_stores)
    return tuple(f"{GENERATED_STORE_PREFIX}{k}" for k in range(num_stores))
