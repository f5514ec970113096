"""Ed25519 signing and verify keys, and key ids.

A key id is ``"ed25519:" + hex(SHA-256(raw 32-byte public key))``.  It names the
key in DSSE signatures, bundles and observations.  Public keys travel as
standard base64 of the 32 raw bytes.  This module holds keys in memory only;
reading and writing key files (mode 0600) is :mod:`notary.keyfile`'s job.
"""

from __future__ import annotations

import base64
import hashlib

import nacl.exceptions
import nacl.signing

from notary.core.canonical import b64decode_strict
from notary.errors import EncodingError, KeyFileError, VerificationError

__all__ = ["SigningKey", "VerifyKey", "key_id_for"]


def key_id_for(public_key: bytes) -> str:
    """Key id of a raw 32-byte Ed25519 public key."""
    return "ed25519:" + hashlib.sha256(public_key).hexdigest()


class VerifyKey:
    """An Ed25519 public key that verifies DSSE signatures."""

    __slots__ = ("_key", "raw", "key_id")

    def __init__(self, raw: bytes) -> None:
        if not isinstance(raw, (bytes, bytearray)) or len(raw) != 32:
            raise VerificationError("an Ed25519 public key is 32 bytes")
        raw = bytes(raw)
        self._key = nacl.signing.VerifyKey(raw)
        self.raw = raw
        self.key_id = key_id_for(raw)

    @classmethod
    def from_b64(cls, text: str) -> "VerifyKey":
        """Parse standard, canonical base64 of the 32 raw bytes."""
        try:
            raw = b64decode_strict(text)
        except EncodingError:
            raise VerificationError("public key is not valid canonical base64") from None
        return cls(raw)

    @property
    def b64(self) -> str:
        return base64.b64encode(self.raw).decode("ascii")

    def verify(self, message: bytes, signature: bytes) -> bool:
        """True when ``signature`` (64 bytes) is valid over ``message``."""
        if len(signature) != 64:
            return False
        try:
            self._key.verify(message, signature)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
            return False
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VerifyKey) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"VerifyKey({self.key_id})"


class SigningKey:
    """An Ed25519 private key.  ``repr`` and ``str`` never show the secret."""

    __slots__ = ("_key", "verify_key")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise KeyFileError("an Ed25519 seed is 32 bytes")
        self._key = nacl.signing.SigningKey(seed)
        self.verify_key = VerifyKey(bytes(self._key.verify_key))

    @classmethod
    def generate(cls) -> "SigningKey":
        return cls(bytes(nacl.signing.SigningKey.generate()))

    @property
    def key_id(self) -> str:
        return self.verify_key.key_id

    def seed(self) -> bytes:
        """The 32-byte secret seed (for writing the key file only)."""
        return bytes(self._key)

    def sign(self, message: bytes) -> bytes:
        """64-byte Ed25519 signature over ``message``."""
        return self._key.sign(message).signature

    def __repr__(self) -> str:
        return f"SigningKey({self.key_id}, secret hidden)"

    __str__ = __repr__
