"""Cold start: scoring NeuMF on explicit vectors, placing new items from their text, fitting new users.

NeuMF scores a (user, item) pair from the user's (GMF, MLP) vectors and the item's (GMF, MLP) vectors plus,
in the ``text`` tower, an item bias. Everything here works on those vectors as plain NumPy arrays, so a new
item (vectors placed from its text) and a catalog item (vectors read from the model) are scored by the same
head, ``score``, without changing the model.

- **New items** (content-based cold start, Gantner et al., "Learning Attribute-to-Feature Mappings for
  Cold-Start Recommendations", ICDM 2010): a ridge regression from the item's text embedding to its learned
  vectors, fitted on warm items. Catalog text is public, so the server fits it and publishes it with the
  model.
- **New users from clicks**: only the user's two vectors are fitted, by a few Adam steps on the clicks and
  sampled negatives, with the shared parameters frozen (the fold-in of Rendle & Schmidt-Thieme,
  "Online-updating regularized kernel matrix factorization models", RecSys 2008, on NeuMF's loss).
- **New users from a text query**: ``rank_for_text``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from shared.atomic import write_atomic
from shared.model import NeuMF

MAPPING_FORMAT = 1
FLOAT = np.float32
REJECTION_SLACK = 4  # draw this many times the negatives needed per try; enumerate below that
NEGATIVES_PER_CLICK = 4  # NeuMF's training ratio (He et al. 2017): the loss the model was trained on
USER_PRIOR_WEIGHT = 1e-2  # L2 pull of a folded-in user towards its start: one click must not overfit
TEXT_POPULARITY_WEIGHT = 3.0  # picked on validation items in 4 of 5 seeds (docs/cold_start.md)
FOLD_IN_STEPS = 30  # recommended fold-in settings: the median of the per-seed validation choices
FOLD_IN_LEARNING_RATE = 0.01


class ColdStartError(ValueError):
    """Invalid cold-start input or file; the message names what is wrong (and the file)."""


def _matrix(array: np.ndarray, name: str, columns: int | None = None) -> np.ndarray:
    out = np.ascontiguousarray(array, dtype=FLOAT)
    if out.ndim != 2 or (columns is not None and out.shape[1] != columns):
        want = f"[n, {columns}]" if columns is not None else "2-D"
        raise ColdStartError(f"{name}: expected a {want} array, got shape {array.shape}")
    if not np.isfinite(out).all():
        raise ColdStartError(f"{name}: holds NaN or infinite values")
    return out


Vectors = TypeVar("Vectors")


def _unchecked(cls: type[Vectors], **fields: np.ndarray) -> Vectors:
    """An instance built without ``__post_init__``'s checks, for rows taken from already-checked vectors: on
    the serving path the checks cost more than scoring the rows does."""
    out = object.__new__(cls)
    for name, value in fields.items():
        object.__setattr__(out, name, value)
    return out


@dataclass(frozen=True)
class ItemVectors:
    """Items as NeuMF scores them: GMF vectors [n, gmf_dim], MLP vectors [n, mlp_dim], bias [n]."""

    gmf: np.ndarray
    mlp: np.ndarray
    bias: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "gmf", _matrix(self.gmf, "gmf"))
        object.__setattr__(self, "mlp", _matrix(self.mlp, "mlp"))
        object.__setattr__(self, "bias", np.ascontiguousarray(self.bias, dtype=FLOAT).reshape(-1))
        if not len(self.gmf) == len(self.mlp) == len(self.bias):
            raise ColdStartError(f"ItemVectors: gmf, mlp and bias disagree on the number of items "
                                 f"({len(self.gmf)}, {len(self.mlp)}, {len(self.bias)})")

    def __len__(self) -> int:
        return len(self.gmf)

    def concat(self, other: ItemVectors) -> ItemVectors:
        return ItemVectors(np.concatenate([self.gmf, other.gmf]), np.concatenate([self.mlp, other.mlp]),
                           np.concatenate([self.bias, other.bias]))

    @classmethod
    def trusted(cls, gmf: np.ndarray, mlp: np.ndarray, bias: np.ndarray) -> ItemVectors:
        """Rows of vectors that were already checked (taken from validated vectors), not checked again."""
        return _unchecked(cls, gmf=gmf, mlp=mlp, bias=bias)

    def take(self, indices: np.ndarray) -> ItemVectors:
        return ItemVectors.trusted(self.gmf[indices], self.mlp[indices], self.bias[indices])

    def stacked(self) -> np.ndarray:
        """[n, gmf_dim + mlp_dim + 1]: the regression target of ``fit_item_mapping``."""
        return np.concatenate([self.gmf, self.mlp, self.bias[:, None]], axis=1)


@dataclass(frozen=True)
class UserVectors:
    """Users as NeuMF scores them: GMF vectors [n, gmf_dim], MLP vectors [n, mlp_dim]."""

    gmf: np.ndarray
    mlp: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "gmf", _matrix(self.gmf, "gmf"))
        object.__setattr__(self, "mlp", _matrix(self.mlp, "mlp"))
        if len(self.gmf) != len(self.mlp):
            raise ColdStartError(f"UserVectors: gmf has {len(self.gmf)} users, mlp {len(self.mlp)}")

    def __len__(self) -> int:
        return len(self.gmf)

    def take(self, indices: np.ndarray) -> UserVectors:
        return _unchecked(UserVectors, gmf=self.gmf[indices], mlp=self.mlp[indices])


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy().astype(FLOAT, copy=False)


@torch.no_grad()
def catalog_item_vectors(model: NeuMF) -> ItemVectors:
    """Every catalog item's vectors exactly as ``model`` scores them (projection, ID residual, bias)."""
    device = next(model.parameters()).device
    gmf, mlp = model.item_vectors(torch.arange(model.shape.n_items, device=device))
    bias = (_numpy(model.item_bias.weight[:, 0]) if model.shape.item_tower == "text"
            else np.zeros(model.shape.n_items, FLOAT))
    return ItemVectors(_numpy(gmf).copy(), _numpy(mlp).copy(), bias.copy())


def user_vectors_of(model: NeuMF, users: np.ndarray) -> UserVectors:
    """Rows ``users`` of the model's (local, private) user embedding tables."""
    index = np.asarray(users, dtype=np.int64)
    return UserVectors(_numpy(model.gmf_user.weight)[index].copy(),
                       _numpy(model.mlp_user.weight)[index].copy())


def average_user(model: NeuMF) -> UserVectors:
    """The mean of the model's user vectors: a neutral start for a user with no history (one row)."""
    return UserVectors(_numpy(model.gmf_user.weight).mean(0, keepdims=True),
                       _numpy(model.mlp_user.weight).mean(0, keepdims=True))


def _linears(model: NeuMF) -> list[nn.Linear]:
    return [layer for layer in model.mlp if isinstance(layer, nn.Linear)]


@dataclass(frozen=True)
class ScoringHead:
    """NeuMF above its embeddings (output layer and MLP layers) as NumPy arrays.

    Why a copy: reading the weights out of torch costs ~0.1 ms per call, more than scoring a few hundred
    candidates does, so the service reads them once per model (``ScoringHead.of``) and passes the head to
    ``score`` and ``fit_user_from_clicks``, which take either a model or its head.
    """

    out_weight: np.ndarray                               # [gmf_dim + last MLP width]
    out_bias: float
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]    # (weight [out, in], bias [out]) per MLP layer

    @classmethod
    def of(cls, model: NeuMF | ScoringHead) -> ScoringHead:
        if isinstance(model, ScoringHead):
            return model
        return cls(_numpy(model.out.weight)[0].copy(), float(model.out.bias.detach()[0]),
                   tuple((_numpy(layer.weight).copy(), _numpy(layer.bias).copy())
                         for layer in _linears(model)))


def score(model: NeuMF | ScoringHead, users: UserVectors, items: ItemVectors) -> np.ndarray:
    """NeuMF's logits [n_users, n_items] for every (user, item) pair of the given vectors.

    The same function as ``model(users, items)``, vectorised like ``NeuMF.score_all_items``: the first MLP
    layer is linear, so its user half is applied once per user and its item half once per item, and only the
    (small) later layers see the [users × items] grid.
    """
    head = ScoringHead.of(model)
    out_weight = head.out_weight
    gmf_dim = users.gmf.shape[1]
    gmf_part = (users.gmf * out_weight[:gmf_dim]) @ items.gmf.T
    if not head.layers:  # no hidden layer: the MLP tower is the concatenation itself
        mlp_weight = out_weight[gmf_dim:]
        user_part = users.mlp @ mlp_weight[:users.mlp.shape[1]]
        item_part = items.mlp @ mlp_weight[users.mlp.shape[1]:]
        logits = gmf_part + user_part[:, None] + item_part[None, :] + head.out_bias + items.bias[None, :]
        return logits.astype(FLOAT)
    first_weight, first_bias = head.layers[0]
    user_weight, item_weight = first_weight[:, :users.mlp.shape[1]], first_weight[:, users.mlp.shape[1]:]
    hidden = (users.mlp @ user_weight.T + first_bias)[:, None, :] + (items.mlp @ item_weight.T)[None]
    np.maximum(hidden, 0.0, out=hidden)
    for weight, bias in head.layers[1:]:
        hidden = np.maximum(hidden @ weight.T + bias, 0.0)
    return (gmf_part + hidden @ out_weight[gmf_dim:] + head.out_bias + items.bias[None, :]).astype(FLOAT)


@dataclass(frozen=True)
class ItemMapping:
    """A linear map from text embedding [d] to item vectors: ``x @ weight + intercept`` split into GMF, MLP
    and bias. Fitted by ``fit_item_mapping``; saved with the model as ``cold_start.npz``."""

    weight: np.ndarray  # [d, gmf_dim + mlp_dim + 1]
    intercept: np.ndarray  # [gmf_dim + mlp_dim + 1]
    gmf_dim: int
    mlp_dim: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", _matrix(self.weight, "weight"))
        object.__setattr__(self, "intercept", np.ascontiguousarray(self.intercept, dtype=FLOAT).reshape(-1))
        width = self.gmf_dim + self.mlp_dim + 1
        if self.weight.shape[1] != width or self.intercept.shape != (width,):
            raise ColdStartError(f"ItemMapping: weight {self.weight.shape} and intercept "
                                 f"{self.intercept.shape} do not fit gmf_dim {self.gmf_dim} + mlp_dim "
                                 f"{self.mlp_dim} + 1")

    @property
    def text_dim(self) -> int:
        return int(self.weight.shape[0])

    def place(self, text_embeddings: np.ndarray) -> ItemVectors:
        """The vectors of new items from their text embeddings [n, d] (servable at once)."""
        x = _matrix(np.atleast_2d(text_embeddings), "text_embeddings", self.text_dim)
        y = x @ self.weight + self.intercept
        return ItemVectors(y[:, :self.gmf_dim], y[:, self.gmf_dim:self.gmf_dim + self.mlp_dim], y[:, -1])

    def plus(self, other: ItemMapping) -> ItemMapping:
        """The mapping whose output is the sum of both (a base projection plus a fitted residual)."""
        return ItemMapping(self.weight + other.weight, self.intercept + other.intercept, self.gmf_dim,
                           self.mlp_dim)

    def save(self, path: str | Path) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, allow_pickle=False, format=np.int64(MAPPING_FORMAT), weight=self.weight,
                 intercept=self.intercept, gmf_dim=np.int64(self.gmf_dim), mlp_dim=np.int64(self.mlp_dim))
        write_atomic(Path(path), lambda fh: fh.write(buffer.getvalue()))

    @classmethod
    def load(cls, path: str | Path) -> ItemMapping:
        """Read a mapping written by ``save``; a missing or malformed file raises ColdStartError naming it."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                if int(data["format"]) != MAPPING_FORMAT:
                    raise ColdStartError(f"{path}: cold-start mapping format {int(data['format'])}, "
                                         f"this version reads {MAPPING_FORMAT}")
                return cls(data["weight"], data["intercept"], int(data["gmf_dim"]), int(data["mlp_dim"]))
        except ColdStartError as exc:
            raise ColdStartError(f"{path}: {exc}" if str(path) not in str(exc) else str(exc)) from exc
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise ColdStartError(f"{path}: not a readable cold-start mapping ({type(exc).__name__}: {exc})"
                                 ) from exc


def ridge_regression(x: np.ndarray, y: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form ridge with an unpenalised intercept: (weight [d, k], intercept [k])."""
    if ridge < 0:
        raise ColdStartError(f"ridge: {ridge} must be >= 0")
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    x_mean, y_mean = x64.mean(0), y64.mean(0)
    xc = x64 - x_mean
    gram = xc.T @ xc + ridge * np.eye(x.shape[1])
    weight = np.linalg.lstsq(gram, xc.T @ (y64 - y_mean), rcond=None)[0]
    return weight.astype(FLOAT), (y_mean - x_mean @ weight).astype(FLOAT)


def fit_item_mapping(text_embeddings: np.ndarray, targets: ItemVectors, ridge: float,
                     base: ItemMapping | None = None) -> ItemMapping:
    """Ridge regression from text embeddings [n, d] of warm items to their vectors (GMF, MLP, bias).

    With ``base`` (the model's own text projection, ``text_projection``), only the residual the base does not
    explain is regressed, so a text item tower keeps its exact projection and the fit learns the rest (the
    ``text`` tower's per-item bias, the ``hybrid`` tower's ID residual).
    """
    x = _matrix(text_embeddings, "text_embeddings")
    if len(x) != len(targets):
        raise ColdStartError(f"text_embeddings has {len(x)} rows, targets {len(targets)} items")
    y = targets.stacked()
    if base is not None:
        y = y - base.place(x).stacked()
    weight, intercept = ridge_regression(x, y, ridge)
    fitted = ItemMapping(weight, intercept, targets.gmf.shape[1], targets.mlp.shape[1])
    return fitted if base is None else base.plus(fitted)


RIDGE_GRID = (0.1, 1.0, 10.0, 100.0)
VALIDATION_SHARE = 0.2  # of warm items, held out to choose the ridge strength


def choose_ridge(text_embeddings: np.ndarray, targets: ItemVectors, seed: int,
                 base: ItemMapping | None = None, grid: tuple[float, ...] = RIDGE_GRID) -> float:
    """The ridge strength of ``grid`` with the lowest squared error on a random ``VALIDATION_SHARE`` of the
    warm items (fitted on the rest): no run setting to tune, and the choice adapts to each model's scale."""
    n = len(targets)
    order = np.random.default_rng(seed).permutation(n)
    n_valid = max(1, round(VALIDATION_SHARE * n))
    valid, train = order[:n_valid], order[n_valid:]
    if len(train) < 2:
        return grid[len(grid) // 2]
    x = _matrix(text_embeddings, "text_embeddings")
    truth = targets.take(valid).stacked()
    errors = [float(((fit_item_mapping(x[train], targets.take(train), ridge, base).place(x[valid]).stacked()
                      - truth) ** 2).mean()) for ridge in grid]
    return grid[int(np.argmin(errors))]


@dataclass(frozen=True)
class TextSubspace:
    """The leading principal directions of the warm catalog's text embeddings (an affine projection).

    Why: a text item tower's projection is learned on the warm items' full text, title words included, and a
    new title's own words then land it in a noisy place. Seen through the catalog's leading principal
    directions (what items share: genre, era, kind of product), a new item's text keeps what its neighbours
    taught the model and drops what is unique to its name. On ML-100K's held-out items this lifts the text
    tower's Recall@10 by ~10 % (docs/cold_start.md, where the number of directions was chosen on validation
    items). The projection is linear, so ``compose`` folds it into an ``ItemMapping``: serving is unchanged.
    """

    mean: np.ndarray   # [d]
    basis: np.ndarray  # [d, m], orthonormal columns

    @classmethod
    def fit(cls, text_embeddings: np.ndarray, components: int) -> TextSubspace:
        """The ``components`` leading directions of centred ``text_embeddings`` [n, d] (fewer if the data has
        fewer: at most n - 1 and d)."""
        if components < 1:
            raise ColdStartError(f"components: {components} must be >= 1 (0 means the whole embedding)")
        x = _matrix(text_embeddings, "text_embeddings").astype(np.float64)
        mean = x.mean(0)
        _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
        rank = min(components, len(x) - 1, x.shape[1])
        return cls(mean.astype(FLOAT), np.ascontiguousarray(vt[:max(rank, 1)].T, dtype=FLOAT))

    def apply(self, text_embeddings: np.ndarray) -> np.ndarray:
        x = _matrix(np.atleast_2d(text_embeddings), "text_embeddings", len(self.mean))
        return (self.mean + ((x - self.mean) @ self.basis) @ self.basis.T).astype(FLOAT)

    def compose(self, mapping: ItemMapping) -> ItemMapping:
        """``mapping`` applied after this projection, as one ``ItemMapping``: x ↦ mapping(apply(x))."""
        projector = self.basis.astype(np.float64) @ self.basis.T.astype(np.float64)  # [d, d]
        weight = projector @ mapping.weight.astype(np.float64)
        shift = self.mean - self.mean @ projector
        intercept = shift @ mapping.weight.astype(np.float64) + mapping.intercept
        return ItemMapping(weight.astype(FLOAT), intercept.astype(FLOAT), mapping.gmf_dim, mapping.mlp_dim)


def fit_text_mapping(text_embeddings: np.ndarray, targets: ItemVectors, seed: int, *,
                     base: ItemMapping | None = None, components: int = 0,
                     ridge: float | None = None) -> ItemMapping:
    """The cold-start mapping from warm items' text embeddings to their vectors: the model's projection
    (``base``, text towers) plus a ridge fit of the rest, seen through the text's ``components`` leading
    principal directions (0: the whole embedding). ``ridge`` None: chosen on held-out warm items."""
    x = _matrix(text_embeddings, "text_embeddings")
    subspace = TextSubspace.fit(x, components) if components else None
    inputs = subspace.apply(x) if subspace is not None else x
    if ridge is None:
        ridge = choose_ridge(inputs, targets, seed, base)
    mapping = fit_item_mapping(inputs, targets, ridge, base)
    return subspace.compose(mapping) if subspace is not None else mapping


def text_projection(model: NeuMF) -> ItemMapping | None:
    """The model's own text → item-vector projection (``text``/``hybrid`` towers, zero bias); None: ``id``."""
    if not model.shape.uses_text:
        return None
    gmf = _numpy(model.gmf_item_proj.weight).T
    mlp = _numpy(model.mlp_item_proj.weight).T
    weight = np.concatenate([gmf, mlp, np.zeros((gmf.shape[0], 1), FLOAT)], axis=1)
    return ItemMapping(weight, np.zeros(weight.shape[1], FLOAT), gmf.shape[1], mlp.shape[1])


@dataclass(frozen=True)
class _Adam:
    """Adam (Kingma & Ba, ICLR 2015) on one NumPy array: the fold-in has two tiny parameters, and NumPy on
    them is faster than torch autograd, whose per-op overhead and OpenMP barriers dominate at this size."""

    learning_rate: float
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def step(self, value: np.ndarray, grad: np.ndarray, moments: list[np.ndarray], t: int) -> None:
        moments[0] *= self.beta1
        moments[0] += (1 - self.beta1) * grad
        moments[1] *= self.beta2
        moments[1] += (1 - self.beta2) * grad * grad
        corrected = self.learning_rate * np.sqrt(1 - self.beta2 ** t) / (1 - self.beta1 ** t)
        value -= corrected * moments[0] / (np.sqrt(moments[1]) + self.eps)


def sample_unclicked(rng: np.random.Generator, n_items: int, clicked: np.ndarray, count: int) -> np.ndarray:
    """Up to ``count`` distinct items outside ``clicked``, uniformly. Rejection sampling keeps a click's
    online refit O(clicks) on a large catalog; enumerating the catalog (O(items)) is left to small ones."""
    available = n_items - len(np.unique(clicked))
    count = min(count, available)
    if count * REJECTION_SLACK >= available:
        return rng.choice(np.setdiff1d(np.arange(n_items), clicked), size=count, replace=False)
    drawn = np.zeros(0, dtype=np.int64)
    while len(drawn) < count:
        more = rng.integers(0, n_items, size=REJECTION_SLACK * count)
        drawn = np.unique(np.concatenate([drawn, more[~np.isin(more, clicked)]]))
    return rng.permutation(drawn)[:count]


def fit_user_from_clicks(model: NeuMF | ScoringHead, catalog: ItemVectors, clicked: np.ndarray, *, steps: int,
                         learning_rate: float, seed: int, start: UserVectors | None = None) -> UserVectors:
    """One new user's vectors fitted to ``clicked`` catalog indices, every shared parameter frozen.

    Each click is a positive with ``NEGATIVES_PER_CLICK`` uniformly sampled unclicked items (drawn once, from
    ``seed``); the loss is NeuMF's binary cross-entropy plus a small L2 pull towards ``start`` (default: zero
    vectors, i.e. the head's item-only score; ``average_user`` is a better start), full-batch Adam for
    ``steps`` steps. Gradients are written out by hand in NumPy (only the two user vectors need them), and
    the item half of the first MLP layer is computed once, so a step is a few tiny matrix products.
    """
    clicked = np.asarray(clicked, dtype=np.int64).reshape(-1)
    if clicked.size == 0:
        raise ColdStartError("clicked: at least one clicked item is needed")
    if clicked.min() < 0 or clicked.max() >= len(catalog):
        raise ColdStartError(f"clicked: item indices must be in [0, {len(catalog)})")
    if steps < 0 or learning_rate <= 0:
        raise ColdStartError(f"steps ({steps}) must be >= 0 and learning_rate ({learning_rate}) > 0")
    gmf_dim, mlp_dim = catalog.gmf.shape[1], catalog.mlp.shape[1]
    if start is None:
        start = UserVectors(np.zeros((1, gmf_dim), FLOAT), np.zeros((1, mlp_dim), FLOAT))
    rng = np.random.default_rng(seed)
    negatives = sample_unclicked(rng, len(catalog), clicked, NEGATIVES_PER_CLICK * clicked.size)
    items = np.concatenate([clicked, negatives])
    labels = np.concatenate([np.ones(clicked.size), np.zeros(negatives.size)]).astype(FLOAT)
    head = ScoringHead.of(model)
    out_weight = head.out_weight
    gmf_out = catalog.gmf[items] * out_weight[:gmf_dim]  # d logit / d gmf_user, per item
    fixed = catalog.bias[items] + head.out_bias
    layers = list(head.layers)
    if layers:
        user_first = layers[0][0][:, :mlp_dim]
        item_first = catalog.mlp[items] @ layers[0][0][:, mlp_dim:].T + layers[0][1]
        mlp_out = out_weight[gmf_dim:]
    else:  # no hidden layer: the MLP tower's output is [mlp_user, mlp_item], linear in the user
        fixed = fixed + catalog.mlp[items] @ out_weight[gmf_dim + mlp_dim:]
        user_linear = out_weight[gmf_dim:gmf_dim + mlp_dim]
    start_gmf, start_mlp = start.gmf[0].copy(), start.mlp[0].copy()
    gmf_user, mlp_user = start_gmf.copy(), start_mlp.copy()
    adam = _Adam(learning_rate)
    gmf_moments = [np.zeros_like(gmf_user), np.zeros_like(gmf_user)]
    mlp_moments = [np.zeros_like(mlp_user), np.zeros_like(mlp_user)]
    n = len(items)
    for t in range(1, steps + 1):
        logits = gmf_out @ gmf_user + fixed
        if layers:
            pre = [mlp_user @ user_first.T + item_first]
            hidden = np.maximum(pre[0], 0.0)
            for weight, bias in layers[1:]:
                pre.append(hidden @ weight.T + bias)
                hidden = np.maximum(pre[-1], 0.0)
            logits = logits + hidden @ mlp_out
        else:
            logits = logits + mlp_user @ user_linear
        d_logits = (1.0 / (1.0 + np.exp(-logits)) - labels) / n  # d mean-BCE / d logit
        grad_gmf = d_logits @ gmf_out + 2 * USER_PRIOR_WEIGHT * (gmf_user - start_gmf)
        if layers:
            delta = d_logits[:, None] * mlp_out[None, :] * (pre[-1] > 0)
            for (weight, _), below in zip(layers[:0:-1], pre[-2::-1], strict=True):
                delta = (delta @ weight) * (below > 0)
            grad_mlp = delta.sum(0) @ user_first
        else:
            grad_mlp = d_logits.sum() * user_linear
        grad_mlp = grad_mlp + 2 * USER_PRIOR_WEIGHT * (mlp_user - start_mlp)
        adam.step(gmf_user, grad_gmf.astype(FLOAT), gmf_moments, t)
        adam.step(mlp_user, grad_mlp.astype(FLOAT), mlp_moments, t)
    return UserVectors(gmf_user[None, :], mlp_user[None, :])


@dataclass(frozen=True)
class QueryPlacement:
    """What ``rank_for_text`` needs to rank in the model's own space: the query is placed like a new item
    (``mapping``) and folded in as the user's one click (``fit_user_from_clicks``)."""

    model: NeuMF | ScoringHead
    mapping: ItemMapping
    catalog: ItemVectors
    start: UserVectors | None = None
    steps: int = FOLD_IN_STEPS
    learning_rate: float = FOLD_IN_LEARNING_RATE
    seed: int = 0


def rank_for_text(query_embedding: np.ndarray, catalog_text: np.ndarray,
                  popularity: np.ndarray | None = None,
                  popularity_weight: float = TEXT_POPULARITY_WEIGHT,
                  placement: QueryPlacement | None = None) -> np.ndarray:
    """Scores [n] of every catalog item for a text query (a user with no history).

    With ``placement`` (the measured best, docs/cold_start.md): the query's embedding is placed by the item
    mapping as if it were an item, the new user is fitted to it as one click, and the catalog is scored by the
    model — so the ranking carries the model's popularity and co-consumption structure, not only wording.
    Without: cosine similarity of the query's and each item's text embedding (both unit-norm) plus
    ``popularity_weight`` × the standardised log-popularity when ``popularity`` (interaction counts per item)
    is given. On ML-100K genre queries the validation-chosen weight made this close to pure popularity.
    """
    query = np.asarray(query_embedding, dtype=FLOAT).reshape(-1)
    if placement is not None:  # the catalog's text is not needed (nor scanned: it may be large)
        items = placement.catalog
        placed = placement.mapping.place(query[None, :])
        user = fit_user_from_clicks(placement.model, items.concat(placed), np.array([len(items)]),
                                    steps=placement.steps, learning_rate=placement.learning_rate,
                                    seed=placement.seed, start=placement.start)
        return score(placement.model, user, items)[0]
    catalog = _matrix(catalog_text, "catalog_text")
    if query.shape[0] != catalog.shape[1]:
        raise ColdStartError(f"query_embedding: {query.shape[0]} dimensions, "
                             f"catalog_text has {catalog.shape[1]}")
    scores = catalog @ query
    if popularity is not None:
        if len(popularity) != len(catalog):
            raise ColdStartError(f"popularity: {len(popularity)} entries for {len(catalog)} catalog items")
        log_pop = np.log1p(np.asarray(popularity, dtype=np.float64))
        spread = log_pop.std() or 1.0
        scores = scores + popularity_weight * ((log_pop - log_pop.mean()) / spread).astype(FLOAT)
    return scores.astype(FLOAT)
