"""Notary key files on disk.

``<data-dir>/notary.key`` holds the 32-byte Ed25519 seed as one line of
base64, mode 0600, created exclusively (never overwritten).  Loading refuses a
key file that is group- or world-accessible.  ``notary.pub`` holds the public
key (mode 0644).  Neither the seed nor the file's content is ever logged.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path

from notary.core import SigningKey
from notary.errors import KeyFileError

__all__ = ["KEY_FILE", "PUB_FILE", "generate_key_file", "load_key_file", "key_path"]

KEY_FILE = "notary.key"
PUB_FILE = "notary.pub"


def key_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / KEY_FILE


def generate_key_file(data_dir: str | Path) -> SigningKey:
    """Create ``data_dir`` (0700) and a fresh key in it.  Refuses to overwrite an existing key."""
    d = Path(data_dir)
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise KeyFileError(f"cannot create data dir {d}: {exc.strerror}") from None
    path = d / KEY_FILE
    key = SigningKey.generate()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists; refusing to overwrite a notary key") from None
    except OSError as exc:
        raise KeyFileError(f"cannot create {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, base64.b64encode(key.seed()) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    (d / PUB_FILE).write_text(key.verify_key.b64 + "\n")
    return key


def load_key_file(data_dir: str | Path) -> SigningKey:
    """Load the notary key; refuse a missing, malformed, or group/world-accessible file."""
    path = key_path(data_dir)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyFileError(f"no key at {path}; run 'parallax keygen --data-dir {data_dir}'") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"{path} is not a regular file")
    if st.st_mode & 0o077:
        raise KeyFileError(
            f"{path} has mode {stat.S_IMODE(st.st_mode):04o}; a notary key must not be group- or "
            f"world-accessible (chmod 600 {path})"
        )
    try:
        seed = base64.b64decode(path.read_bytes().strip(), validate=True)
    except (binascii.Error, ValueError, OSError):
        raise KeyFileError(f"{path} is not a Parallax key file") from None
    return SigningKey(seed)
