"""SecAgg+ masks from the full 256-bit seed (AES-256-CTR), instead of Flower 1.41's 32-bit one.

Why: Flower's ``pseudo_rand_gen`` XOR-folds each 32-byte mask seed to 32 bits and expands it with NumPy's
Mersenne Twister. At unmasking the server legitimately recovers a surviving store's private mask, so one
store's update is hidden only by its pairwise masks, and with few neighbours a meet-in-the-middle search over
their 32-bit seeds is within reach (docs/privacy.md, "Caveats"). Here each mask is AES-256 in counter mode
keyed by SHA-256 of the whole seed, the usual PRG of secure aggregation: a 2^256 seed space per mask, and
faster than the Twister.

Same interface and output types as Flower's function (one int64 array per shape, values in [0, num_range)),
so the SecAgg+ protocol is unchanged. Client and server must expand seeds the same way:
``shared/secagg.py``'s ``install()`` puts this function into both Flower modules, and fedrec's ClientApp and
ServerApp both call it (in a deployment both come from the same FAB).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

DOMAIN = b"fedrec/secagg-mask/v1"  # keys these masks apart from any other use of the same seed
DRAW_BYTES = 8  # one uint64 per value: reducing it modulo num_range (<= 2^32) biases by < 2^-32
ZERO_NONCE = bytes(16)  # each key is used for one stream only, so a fixed counter start is safe


def pseudo_rand_gen(seed: bytes, num_range: int,
                    dimensions_list: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """One uniform int64 array in [0, num_range) per shape in ``dimensions_list``, determined by ``seed``."""
    if not 0 < num_range <= 2**32:
        raise ValueError(f"num_range must be in (0, 2^32], got {num_range}")
    sizes = [math.prod(shape) for shape in dimensions_list]
    key = hashlib.sha256(DOMAIN + bytes(seed)).digest()
    stream = Cipher(algorithms.AES(key), modes.CTR(ZERO_NONCE)).encryptor().update(
        bytes(DRAW_BYTES * sum(sizes)))
    values = (np.frombuffer(stream, dtype="<u8") % np.uint64(num_range)).astype(np.int64)
    masks, start = [], 0
    for shape, size in zip(dimensions_list, sizes, strict=True):
        masks.append(values[start:start + size].reshape(shape))
        start += size
    return masks
