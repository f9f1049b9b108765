"""fedrec's parts inside Flower's SecAgg+: faster Shamir sharing and key agreement, full-strength masks.

The protocol, its stages, share encryption and quantization stay Flower's (flwr 1.41). ``install()``
rebinds, in Flower's SecAgg+ client mod and server workflow modules, the functions they imported by name:
- ``create_shares`` / ``combine_shares`` → ``shared/shamir.py`` (the same shares, ~10× / ~25-45× faster);
- ``pseudo_rand_gen`` → ``shared/secagg_masks.py`` (masks from the whole 256-bit seed, not 32 bits of it);
- the key pair, key (de)serialization and ``generate_shared_key`` functions → ``shared/secagg_keys.py``
  (X25519 with raw keys instead of P-384 with PEM keys re-parsed per neighbour).

Both sides must agree keys and expand mask seeds alike, so the ClientApp calls it before each SecAgg+ message
(every Ray actor and every ``flwr-clientapp`` process) and the ServerApp before it builds the SecAgg+
workflow. It is idempotent, and fails loudly, naming the attribute, if Flower's module layout no longer
matches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shared import secagg_keys, secagg_masks, shamir
from shared.flower_patch import rebind

CLIENT_MOD_MODULE = "flwr.client.mod.secure_aggregation.secaggplus_mod"
SERVER_WORKFLOW_MODULE = "flwr.server.workflow.secure_aggregation.secaggplus_workflow"
CLIENT_KEY_FUNCTIONS = ("generate_key_pairs", "private_key_to_bytes", "public_key_to_bytes",
                        "bytes_to_private_key", "bytes_to_public_key", "generate_shared_key")
SERVER_KEY_FUNCTIONS = ("bytes_to_private_key", "bytes_to_public_key", "generate_shared_key")


def replacements() -> list[tuple[str, str, Callable[..., Any]]]:
    """(Flower module, attribute, fedrec's function) for every rebinding ``install`` makes."""
    keys = ([(CLIENT_MOD_MODULE, name, getattr(secagg_keys, name)) for name in CLIENT_KEY_FUNCTIONS]
            + [(SERVER_WORKFLOW_MODULE, name, getattr(secagg_keys, name)) for name in SERVER_KEY_FUNCTIONS])
    return [(CLIENT_MOD_MODULE, "create_shares", shamir.create_shares),
            (CLIENT_MOD_MODULE, "pseudo_rand_gen", secagg_masks.pseudo_rand_gen),
            (SERVER_WORKFLOW_MODULE, "combine_shares", shamir.combine_shares),
            (SERVER_WORKFLOW_MODULE, "pseudo_rand_gen", secagg_masks.pseudo_rand_gen), *keys]


def install() -> None:
    """Point Flower's SecAgg+ client mod and server workflow at fedrec's functions (see above)."""
    for module_name, name, replacement in replacements():
        # import_module (in rebind): the package re-exports the function ``secaggplus_mod`` under the
        # module's name
        rebind(module_name, name, replacement, "shared/secagg.py")
