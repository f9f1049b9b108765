"""How the shared parameters travel in a Flower message: packed into one flat array.

Flower 1.41 stores every array of a message as its own objects (an ``Array`` and its chunk), and in a
deployment each object is pushed and pulled by its own authenticated HTTPS request through the SuperLink.
NeuMF's shared part is about ten arrays, so a model-carrying message was ~20 objects and the requests for
them were most of the SuperLink's work in a round (docs/results.md, "Deployment round"). One flat array makes
it one object whatever the model. SecAgg+ masks and sums element-wise, so packing changes nothing it computes.

Both sides know the shapes (the server from its global parameters, a store from the model it builds), so
the message carries values only; a message whose size does not match is refused, naming both sizes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


class WireFormatError(ValueError):
    """A message's arrays are not one packed vector of the expected size."""


def pack(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``arrays`` as the one-element list a Flower message carries (their common dtype, C order)."""
    if not arrays:
        return [np.zeros(0, dtype=np.float32)]
    return [np.concatenate([np.asarray(a).ravel() for a in arrays])]


def packed_length(shapes: Sequence[tuple[int, ...]]) -> int:
    """Values in the vector that carries arrays of ``shapes``: all a message has room for."""
    return sum(math.prod(shape) for shape in shapes)


def unpack(packed: Sequence[np.ndarray], shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """The arrays ``pack`` flattened, as views of the message's vector, one per shape in ``shapes``."""
    if len(packed) != 1 or np.asarray(packed[0]).ndim != 1:
        got = ", ".join(str(tuple(np.shape(a))) for a in packed)
        raise WireFormatError(f"expected one packed vector of shared parameters, got {len(packed)} "
                              f"array(s) of shape(s) [{got}]")
    vector = np.asarray(packed[0])
    if vector.size != packed_length(shapes):
        raise WireFormatError(f"packed vector has {vector.size} values, the shared parameters "
                              f"{[tuple(s) for s in shapes]} need {packed_length(shapes)}")
    sizes = [math.prod(shape) for shape in shapes]
    bounds = np.cumsum([0, *sizes])
    return [vector[start:stop].reshape(shape) for start, stop, shape in zip(bounds[:-1], bounds[1:], shapes,
                                                                             strict=True)]
