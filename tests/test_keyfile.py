"""Key files on disk: the raw notary seed and the encrypted (PKCS#8 PEM) operator key.

The encrypted format is checked against the real ``openssl`` binary both ways:
OpenSSL reads the key Parallax writes, and Parallax reads a key OpenSSL wrote.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from notary.core import SigningKey
from notary.errors import KeyFileError
from notary.keyfile import (
    OPERATOR_KEY_FILE,
    OPERATOR_PUB_FILE,
    generate_encrypted_key_file,
    generate_key_file,
    is_encrypted_key_file,
    load_encrypted_key_file,
    load_key_file,
)

PASS = "correct horse battery staple"
OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl binary not installed (.ci/run installs it)")


def test_raw_key_file_is_one_line_of_base64_seed(tmp_path: Path) -> None:
    key = generate_key_file(tmp_path)
    raw = (tmp_path / "notary.key").read_bytes()
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    assert base64.b64decode(raw.strip(), validate=True) == key.seed()
    assert (tmp_path / "notary.pub").read_text() == key.verify_key.b64 + "\n"
    assert load_key_file(tmp_path).key_id == key.key_id


def test_encrypted_key_round_trip_and_modes(tmp_path: Path) -> None:
    key = generate_encrypted_key_file(tmp_path / "op", PASS)
    pem = tmp_path / "op" / OPERATOR_KEY_FILE
    assert (pem.stat().st_mode & 0o777) == 0o600
    assert (tmp_path / "op").stat().st_mode & 0o777 == 0o700
    assert pem.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n")
    assert is_encrypted_key_file(pem)
    assert key.verify_key.b64 not in pem.read_text()
    assert base64.b64encode(key.seed()).decode() not in pem.read_text()
    assert (tmp_path / "op" / OPERATOR_PUB_FILE).read_text() == key.verify_key.b64 + "\n"
    assert load_encrypted_key_file(pem, PASS).key_id == key.key_id


def test_wrong_passphrase_is_a_key_file_error(tmp_path: Path) -> None:
    generate_encrypted_key_file(tmp_path, PASS)
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        load_encrypted_key_file(tmp_path / OPERATOR_KEY_FILE, PASS + "x")


def test_short_passphrase_refused_and_nothing_written(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="at least 8"):
        generate_encrypted_key_file(tmp_path / "op", "short")
    assert not (tmp_path / "op" / OPERATOR_KEY_FILE).exists()


def test_encrypted_key_is_never_overwritten(tmp_path: Path) -> None:
    generate_encrypted_key_file(tmp_path, PASS)
    before = (tmp_path / OPERATOR_KEY_FILE).read_bytes()
    with pytest.raises(KeyFileError, match="already exists"):
        generate_encrypted_key_file(tmp_path, PASS)
    assert (tmp_path / OPERATOR_KEY_FILE).read_bytes() == before


def test_group_readable_encrypted_key_refused(tmp_path: Path) -> None:
    generate_encrypted_key_file(tmp_path, PASS)
    os.chmod(tmp_path / OPERATOR_KEY_FILE, 0o640)
    with pytest.raises(KeyFileError, match="group- or world-accessible"):
        load_encrypted_key_file(tmp_path / OPERATOR_KEY_FILE, PASS)


def test_raw_seed_file_is_not_an_encrypted_key(tmp_path: Path) -> None:
    generate_key_file(tmp_path)
    assert not is_encrypted_key_file(tmp_path / "notary.key")
    with pytest.raises(KeyFileError, match="not an encrypted PKCS#8"):
        load_encrypted_key_file(tmp_path / "notary.key", PASS)


@needs_openssl
def test_openssl_reads_the_encrypted_key(tmp_path: Path) -> None:
    key = generate_encrypted_key_file(tmp_path, PASS)
    env = {**os.environ, "PW": PASS}
    out = subprocess.run(
        [OPENSSL or "openssl", "pkey", "-in", str(tmp_path / OPERATOR_KEY_FILE), "-passin", "env:PW",
         "-pubout", "-outform", "DER"],
        capture_output=True, env=env, timeout=30, check=True,
    ).stdout
    # SubjectPublicKeyInfo for Ed25519 (RFC 8410): a 12-byte prefix, then the raw 32-byte key.
    assert out[:12] == bytes.fromhex("302a300506032b6570032100")
    assert out[12:] == key.verify_key.raw
    bad = subprocess.run(
        [OPENSSL or "openssl", "pkey", "-in", str(tmp_path / OPERATOR_KEY_FILE), "-passin", "pass:wrong-passphrase",
         "-noout"], capture_output=True, timeout=30,
    )
    assert bad.returncode != 0


@needs_openssl
def test_a_key_made_by_openssl_loads(tmp_path: Path) -> None:
    pem = tmp_path / "from-openssl.pem"
    env = {**os.environ, "PW": PASS}
    subprocess.run(
        [OPENSSL or "openssl", "genpkey", "-algorithm", "ed25519", "-aes-256-cbc", "-pass", "env:PW",
         "-out", str(pem)], env=env, capture_output=True, timeout=30, check=True,
    )
    os.chmod(pem, 0o600)
    pub = subprocess.run(
        [OPENSSL or "openssl", "pkey", "-in", str(pem), "-passin", "env:PW", "-pubout", "-outform", "DER"],
        env=env, capture_output=True, timeout=30, check=True,
    ).stdout
    key = load_encrypted_key_file(pem, PASS)
    assert isinstance(key, SigningKey)
    assert key.verify_key.raw == pub[12:]
    sig = key.sign(b"bundle bytes")
    assert key.verify_key.verify(b"bundle bytes", sig)
