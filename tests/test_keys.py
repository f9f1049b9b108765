"""`fedrec keys`: a CA, a SuperLink certificate with the right SANs, OpenSSH EC node keys, 0600 key files."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from shared import keys

BIN = Path(sys.executable).parent


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_superlink_certificate_is_signed_by_the_ca_and_names_every_san(tmp_path: Path) -> None:
    keys.create_ca(tmp_path)
    keys.create_superlink_certificate(tmp_path, ["superlink", "fl.example.org", "127.0.0.1", "::1"])
    ca, cert = _cert(tmp_path / keys.CA_CERT_FILE), _cert(tmp_path / keys.SUPERLINK_CERT_FILE)
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["superlink", "fl.example.org"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"),
                                                        ipaddress.ip_address("::1")]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True


def test_superlink_key_matches_its_certificate(tmp_path: Path) -> None:
    keys.create_ca(tmp_path)
    keys.create_superlink_certificate(tmp_path)
    key = serialization.load_pem_private_key((tmp_path / keys.SUPERLINK_KEY_FILE).read_bytes(), None)
    assert key.public_key() == _cert(tmp_path / keys.SUPERLINK_CERT_FILE).public_key()


def test_node_keys_are_openssh_ec_keys_that_flower_can_load(tmp_path: Path) -> None:
    pair = keys.create_node_keys(tmp_path, "partner-7")
    private = serialization.load_ssh_private_key(pair.private_key.read_bytes(), password=None)
    public = serialization.load_ssh_public_key(pair.public_key.read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey)  # flower-supernode requires an EC key
    assert private.public_key() == public
    assert pair.public_key.read_text().startswith("ecdsa-sha2-nistp384 ")


def test_private_keys_are_0600_and_public_files_0644(tmp_path: Path) -> None:
    written = keys.create_federation(tmp_path, ["a", "b"])
    private = [tmp_path / keys.CA_KEY_FILE, tmp_path / keys.SUPERLINK_KEY_FILE,
               tmp_path / keys.SUPEREXEC_SECRET_FILE, tmp_path / "nodes" / "a", tmp_path / "nodes" / "b"]
    assert all(_mode(p) == 0o600 for p in private), {str(p): oct(_mode(p)) for p in private}
    public = [p for p in written if p not in private]
    assert len(public) == 4  # ca.crt, superlink.crt, a.pub, b.pub
    assert all(_mode(p) == 0o644 for p in public)


def test_existing_keys_are_not_overwritten_without_force(tmp_path: Path) -> None:
    first = keys.create_node_keys(tmp_path, "partner-1").private_key.read_bytes()
    with pytest.raises(keys.KeyMaterialError, match="partner-1: already exists"):
        keys.create_node_keys(tmp_path, "partner-1")
    rotated = keys.create_node_keys(tmp_path, "partner-1", overwrite=True).private_key.read_bytes()
    assert rotated != first


def test_superlink_certificate_without_a_ca_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(keys.KeyMaterialError, match=r"ca.crt: no CA here; create one first"):
        keys.create_superlink_certificate(tmp_path)


@pytest.mark.parametrize("name", ["", "../evil", "a/b", "-x", "x" * 64])
def test_node_names_that_are_not_plain_file_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(keys.KeyMaterialError, match="--name"):
        keys.create_node_keys(tmp_path, name)


def test_cli_creates_a_federation_and_refuses_to_clobber_it(tmp_path: Path) -> None:
    out = tmp_path / "secrets"
    first = subprocess.run([str(BIN / "fedrec"), "keys", "federation", "--out", str(out), "--partner", "p1",
                            "--san", "fl.example.org"], capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert (out / "nodes" / "p1.pub").is_file()
    cert = _cert(out / keys.SUPERLINK_CERT_FILE)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["fl.example.org"]
    again = subprocess.run([str(BIN / "fedrec"), "keys", "ca", "--out", str(out)], capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 2
    assert "ca.key: already exists (pass --force" in again.stderr


def test_cli_superexec_secret_is_private_and_random(tmp_path: Path) -> None:
    for out in (tmp_path / "a", tmp_path / "b"):
        done = subprocess.run([str(BIN / "fedrec"), "keys", "superexec-secret", "--out", str(out)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert _mode(out / keys.SUPEREXEC_SECRET_FILE) == 0o600
    secrets = [(tmp_path / d / keys.SUPEREXEC_SECRET_FILE).read_text() for d in ("a", "b")]
    assert len(secrets[0]) == 2 * keys.SUPEREXEC_SECRET_BYTES
    assert secrets[0] != secrets[1]


def test_keys_cli_imports_nothing_heavy() -> None:
    code = ("import sys, shared.keys_cli, argparse; p = argparse.ArgumentParser(); "
            "shared.keys_cli.configure(p); print(sorted(m for m in ('torch', 'flwr', 'cryptography') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr
