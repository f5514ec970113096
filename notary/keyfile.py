"""Notary key files on disk.

``<data-dir>/notary.key`` holds the 32-byte Ed25519 seed as one line of
base64, mode 0600, created exclusively (never overwritten).  Loading refuses a
key file that is group- or world-accessible.  ``notary.pub`` holds the public
key (mode 0644).  Neither the seed nor the file's content is ever logged.

An operator key (the key that signs bundles, kept offline) may instead be
stored encrypted: ``operator.pem`` is the Ed25519 key as a PKCS#8
``ENCRYPTED PRIVATE KEY`` PEM (RFC 5958 / RFC 8410, encrypted with
``cryptography``'s ``BestAvailableEncryption``: PBES2, scrypt or PBKDF2, AES-256),
mode 0600, which ``openssl pkey`` and other tools read; ``operator.pub`` holds
its public key as one line of base64 (what ``--operator-key`` takes).  The
formats are documented in ``docs/key-files.md``.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path

from notary.core import SigningKey
from notary.errors import KeyFileError

__all__ = [
    "KEY_FILE", "PUB_FILE", "generate_key_file", "load_key_file", "key_path",
    "OPERATOR_KEY_FILE", "OPERATOR_PUB_FILE", "MIN_PASSPHRASE", "generate_encrypted_key_file",
    "load_encrypted_key_file", "is_encrypted_key_file",
]

KEY_FILE = "notary.key"
PUB_FILE = "notary.pub"


OPERATOR_KEY_FILE = "operator.pem"
OPERATOR_PUB_FILE = "operator.pub"
MIN_PASSPHRASE = 8  # characters; an operator key's passphrase shorter than this is refused
_ENCRYPTED_PEM = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"


def key_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / KEY_FILE


def _make_dir(d: Path) -> None:
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise KeyFileError(f"cannot create data dir {d}: {exc.strerror}") from None


def _write_exclusive(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 and ``data``; never overwrite."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists; refusing to overwrite a key") from None
    except OSError as exc:
        raise KeyFileError(f"cannot create {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def generate_key_file(data_dir: str | Path) -> SigningKey:
    """Create ``data_dir`` (0700) and a fresh key in it.  Refuses to overwrite an existing key."""
    d = Path(data_dir)
    _make_dir(d)
    key = SigningKey.generate()
    _write_exclusive(d / KEY_FILE, base64.b64encode(key.seed()) + b"\n")
    (d / PUB_FILE).write_text(key.verify_key.b64 + "\n")
    return key


def _check_private(path: Path, hint: str) -> None:
    """Refuse a missing, non-regular, or group/world-accessible key file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyFileError(f"no key at {path}; {hint}") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"{path} is not a regular file")
    if st.st_mode & 0o077:
        raise KeyFileError(
            f"{path} has mode {stat.S_IMODE(st.st_mode):04o}; a private key must not be group- or "
            f"world-accessible (chmod 600 {path})"
        )


def load_key_file(data_dir: str | Path) -> SigningKey:
    """Load the notary key; refuse a missing, malformed, or group/world-accessible file."""
    path = key_path(data_dir)
    _check_private(path, f"run 'parallax keygen --data-dir {data_dir}'")
    try:
        seed = base64.b64decode(path.read_bytes().strip(), validate=True)
    except (binascii.Error, ValueError, OSError):
        raise KeyFileError(f"{path} is not a Parallax key file") from None
    return SigningKey(seed)


# -- encrypted operator keys (PKCS#8 PEM) ----------------------------------------

def is_encrypted_key_file(path: str | Path) -> bool:
    """True if ``path`` starts like a PKCS#8 ``ENCRYPTED PRIVATE KEY`` PEM."""
    try:
        with open(path, "rb") as f:
            return f.read(len(_ENCRYPTED_PEM)) == _ENCRYPTED_PEM
    except OSError:
        return False


def generate_encrypted_key_file(data_dir: str | Path, passphrase: str) -> SigningKey:
    """Create ``data_dir`` (0700) with a fresh ``operator.pem`` (encrypted, 0600) and ``operator.pub``.

    The passphrase must be at least :data:`MIN_PASSPHRASE` characters.  Refuses to
    overwrite an existing key.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if len(passphrase) < MIN_PASSPHRASE:
        raise KeyFileError(f"a key passphrase needs at least {MIN_PASSPHRASE} characters")
    d = Path(data_dir)
    _make_dir(d)
    key = SigningKey.generate()
    pem = Ed25519PrivateKey.from_private_bytes(key.seed()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase.encode()),
    )
    _write_exclusive(d / OPERATOR_KEY_FILE, pem)
    (d / OPERATOR_PUB_FILE).write_text(key.verify_key.b64 + "\n")
    return key


def load_encrypted_key_file(path: str | Path, passphrase: str) -> SigningKey:
    """Load an encrypted PKCS#8 PEM Ed25519 key (mode 0600 required).

    Raises :class:`KeyFileError` for a wrong passphrase, a key that is not Ed25519,
    or a file that is not an encrypted PEM (an unencrypted key is refused: this
    loader is for keys that are meant to be protected).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    p = Path(path)
    _check_private(p, "create one with 'parallax keygen --encrypt --data-dir DIR'")
    data = p.read_bytes()
    if not data.lstrip().startswith(_ENCRYPTED_PEM):
        raise KeyFileError(f"{p} is not an encrypted PKCS#8 PEM key")
    try:
        pk = serialization.load_pem_private_key(data, passphrase.encode())
    except (ValueError, TypeError):
        raise KeyFileError(f"cannot decrypt {p}: wrong passphrase or damaged file") from None
    if not isinstance(pk, Ed25519PrivateKey):
        raise KeyFileError(f"{p} holds a {type(pk).__name__.lstrip('_')}, not an Ed25519 key")
    return SigningKey(pk.private_bytes_raw())
