"""Deployment key material: a private CA, the SuperLink's TLS certificate, and SuperNode authentication keys.

Flower's Deployment Engine (1.41) needs three kinds of files, all made here with the ``cryptography`` package
(no ``openssl`` shell-out, so the same code runs on every operator's machine and in CI):

- a CA certificate that every SuperNode and the ``flwr`` CLI trust (``--root-certificates``);
- the SuperLink's certificate and key (``--ssl-certfile/--ssl-keyfile``), signed by the CA, whose
  subjectAltNames must name every address partners dial (a DNS name such as ``superlink`` inside compose, the
  public host name, ``127.0.0.1`` for loopback tests): TLS clients check the SAN, not the common name;
- one node-authentication key pair per partner: ``flower-supernode --auth-supernode-private-key`` loads it
  with ``load_ssh_private_key`` and requires an elliptic-curve key, so private keys are written in OpenSSH
  format and public keys as an OpenSSH line, which ``flwr supernode register <file>`` registers.

Private keys are written atomically with mode 0600 and never overwritten unless asked (``overwrite``), so a
second ``fedrec keys`` cannot silently invalidate a federation's registered keys.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.atomic import write_atomic

CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
SUPERLINK_CERT_FILE = "superlink.crt"
SUPERLINK_KEY_FILE = "superlink.key"
NODES_DIR = "nodes"
PUBLIC_KEY_SUFFIX = ".pub"
SUPEREXEC_SECRET_FILE = "superexec.secret"
SUPEREXEC_SECRET_BYTES = 32

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644

CA_VALIDITY_DAYS = 3650
# Browsers cap server certificates at 398 days; gRPC clients do not, but a yearly rotation keeps habits sane.
SERVER_VALIDITY_DAYS = 397
# Clock skew between the machine that signs and those that verify.
BACKDATE = dt.timedelta(minutes=5)

TLS_CURVE = ec.SECP256R1()
# flower-supernode accepts any EC key; P-384 is what Flower's own examples generate with ssh-keygen.
NODE_AUTH_CURVE = ec.SECP384R1()

DEFAULT_SUPERLINK_NAMES = ("superlink", "localhost", "127.0.0.1")
DEFAULT_CA_NAME = "fedrec federation CA"

_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


class KeyMaterialError(ValueError):
    """Bad key-material request (existing file, missing CA, bad name); str() names the file or argument."""


@dataclass(frozen=True)
class NodeKeyPair:
    private_key: Path
    public_key: Path


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_private(path: Path, data: bytes, overwrite: bool) -> None:
    """Atomic write; ``write_atomic``'s temporary file is created 0600, so the key is never world-readable."""
    if path.exists() and not overwrite:
        raise KeyMaterialError(f"{path}: already exists (pass --force to replace it)")
    write_atomic(path, lambda fh: fh.write(data))
    os.chmod(path, PRIVATE_MODE)


def _write_public(path: Path, data: bytes) -> None:
    write_atomic(path, lambda fh: fh.write(data))
    os.chmod(path, PUBLIC_MODE)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def create_ca(directory: str | Path, common_name: str = DEFAULT_CA_NAME, overwrite: bool = False) -> Path:
    """A self-signed CA (``ca.crt``, ``ca.key`` 0600) in ``directory``; returns the certificate's path."""
    directory = Path(directory)
    key = ec.generate_private_key(TLS_CURVE)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE).not_valid_after(now + dt.timedelta(days=CA_VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     key_cert_sign=True, crl_sign=True, encipher_only=False,
                                     decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(directory / CA_KEY_FILE, _pem_key(key), overwrite)
    _write_public(directory / CA_CERT_FILE, _pem_cert(cert))
    return directory / CA_CERT_FILE


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
    for path in (cert_path, key_path):
        if not path.is_file():
            raise KeyMaterialError(f"{path}: no CA here; create one first with "
                                   f"`fedrec keys ca --out {directory}`")
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyMaterialError(f"{key_path}: expected an elliptic-curve CA key")
    return cert, key


def subject_alternative_names(names: Sequence[str]) -> list[x509.GeneralName]:
    """IP addresses become IPAddress SANs (clients dialing an IP match only those), the rest DNSName SANs."""
    if not names:
        raise KeyMaterialError("--san: the SuperLink certificate needs at least one host name or IP address")
    result: list[x509.GeneralName] = []
    for name in names:
        try:
            result.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            result.append(x509.DNSName(name))
    return result


def create_superlink_certificate(directory: str | Path, names: Sequence[str] = DEFAULT_SUPERLINK_NAMES,
                                 overwrite: bool = False) -> Path:
    """``superlink.crt`` + ``superlink.key`` (0600), signed by the CA in ``directory``, for ``names``."""
    directory = Path(directory)
    ca_cert, ca_key = _load_ca(directory)
    sans = subject_alternative_names(names)
    key = ec.generate_private_key(TLS_CURVE)
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE).not_valid_after(now + dt.timedelta(days=SERVER_VALIDITY_DAYS))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(directory / SUPERLINK_KEY_FILE, _pem_key(key), overwrite)
    _write_public(directory / SUPERLINK_CERT_FILE, _pem_cert(cert))
    return directory / SUPERLINK_CERT_FILE


def node_key_paths(directory: str | Path, name: str) -> NodeKeyPair:
    """Where ``create_node_keys`` puts partner ``name``'s key pair: ``nodes/<name>``, ``nodes/<name>.pub``."""
    if not _NODE_NAME.fullmatch(name):
        raise KeyMaterialError(f"--name: {name!r} must be 1-63 letters, digits, '.', '_' or '-' "
                               "(it becomes a file name)")
    private = Path(directory) / NODES_DIR / name
    return NodeKeyPair(private, private.with_name(name + PUBLIC_KEY_SUFFIX))


def create_node_keys(directory: str | Path, name: str, overwrite: bool = False) -> NodeKeyPair:
    """An EC node-authentication key pair in OpenSSH format for partner ``name`` (private key 0600)."""
    paths = node_key_paths(directory, name)
    key = ec.generate_private_key(NODE_AUTH_CURVE)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write_private(paths.private_key, private, overwrite)
    _write_public(paths.public_key, public + f" fedrec-{name}\n".encode())
    return paths


def create_federation(directory: str | Path, partners: Sequence[str],
                      names: Sequence[str] = DEFAULT_SUPERLINK_NAMES, overwrite: bool = False) -> list[Path]:
    """All a demo federation needs: CA, SuperLink certificate, SuperExec secret, a key pair per partner."""
    written = [create_ca(directory, overwrite=overwrite),
               create_superlink_certificate(directory, names, overwrite=overwrite),
               create_superexec_secret(directory, overwrite=overwrite)]
    for partner in partners:
        pair = create_node_keys(directory, partner, overwrite=overwrite)
        written += [pair.private_key, pair.public_key]
    return written


def create_superexec_secret(directory: str | Path, overwrite: bool = False) -> Path:
    """``superexec.secret`` (0600): the shared secret SuperLink and the ServerApp-side SuperExec both read
    with ``--superexec-auth-secret-file``. In flwr 1.41 the Runtime API shares the SuperLink's public port, so
    without it anyone who reaches that port could acquire the ServerApp's task."""
    path = Path(directory) / SUPEREXEC_SECRET_FILE
    _write_private(path, secrets.token_hex(SUPEREXEC_SECRET_BYTES).encode(), overwrite)
    return path
