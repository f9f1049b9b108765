"""SecAgg+ key agreement over X25519 instead of Flower 1.41's P-384, at the security level of fedrec's TLS.

Why: in a 50-store round each store agrees a key with each of its neighbours twice (once to encrypt the
shares it sends them, once to derive their pairwise mask), and Flower re-parses its own PEM private key for
every neighbour. With P-384 that was most of the SecAgg+ work left in a store after fedrec's Shamir sharing
(py-spy, docs/results.md "Speed"): a P-384 exchange is ~0.36 ms and a PEM parse ~0.2 ms here, an X25519
exchange ~0.05 ms and loading a raw key a few microseconds.

Strength: X25519 (RFC 7748) is the ~128-bit level, the same as the P-256 certificates that protect every
SecAgg+ message in transit (shared/keys.py), the masks' AES-256 PRG (shared/secagg_masks.py) and TLS 1.3's
default group. Flower's P-384 is ~192-bit, which the rest of the channel does not match.

The protocol is unchanged: each store still holds two ephemeral key pairs per round, still Shamir-shares its
first private key (now 32 raw bytes instead of a 306-byte PEM, which also makes sharing it cheaper), and
shared keys are still HKDF-SHA256 output, base64url-encoded as Fernet and the mask PRG take them. Keys are
raw 32-byte strings. Both sides must use this module (``shared/secagg.py`` installs it into Flower's client
mod and server workflow); a peer still on Flower's PEM keys is refused with an error that says so.
"""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32  # X25519 private and public keys, raw (RFC 7748)
HKDF_INFO = b"fedrec/secagg-key/v1"  # keys these shared keys apart from any other use of the exchange


def generate_key_pairs() -> tuple[x25519.X25519PrivateKey, x25519.X25519PublicKey]:
    """A fresh ephemeral key pair (Flower's ``generate_key_pairs`` interface)."""
    private_key = x25519.X25519PrivateKey.generate()
    return private_key, private_key.public_key()


def private_key_to_bytes(private_key: x25519.X25519PrivateKey) -> bytes:
    """The raw 32-byte private key: what the store keeps in its state and Shamir-shares."""
    return private_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                     serialization.NoEncryption())


def public_key_to_bytes(public_key: x25519.X25519PublicKey) -> bytes:
    """The raw 32-byte public key the store announces."""
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def bytes_to_private_key(private_key_bytes: bytes) -> x25519.X25519PrivateKey:
    """Load a key written by ``private_key_to_bytes``; anything else is refused, naming the likely cause."""
    return x25519.X25519PrivateKey.from_private_bytes(_raw_key(private_key_bytes, "private"))


def bytes_to_public_key(public_key_bytes: bytes) -> x25519.X25519PublicKey:
    """Load a key written by ``public_key_to_bytes``; anything else is refused, naming the likely cause."""
    return x25519.X25519PublicKey.from_public_bytes(_raw_key(public_key_bytes, "public"))


def generate_shared_key(private_key: x25519.X25519PrivateKey, public_key: x25519.X25519PublicKey) -> bytes:
    """The pairwise key both ends derive: HKDF-SHA256 of the X25519 secret, base64url (a Fernet key)."""
    secret = private_key.exchange(public_key)
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=HKDF_INFO).derive(secret)
    return base64.urlsafe_b64encode(derived)


def _raw_key(data: bytes, kind: str) -> bytes:
    data = bytes(data)
    if len(data) != KEY_BYTES:
        hint = (" (a PEM key: this peer runs Flower's own P-384 SecAgg+ keys, not fedrec's; run the same "
                "fedrec version on the server and every partner)" if data.startswith(b"-----BEGIN") else "")
        raise ValueError(f"SecAgg+ {kind} key must be {KEY_BYTES} raw X25519 bytes, got {len(data)}{hint}")
    return data
