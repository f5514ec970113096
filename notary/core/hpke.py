"""HPKE (RFC 9180), base mode, for the one KEM and KDF Oblivious HTTP uses here.

Theory of operation.  KEM DHKEM(X25519, HKDF-SHA256) (0x0020), KDF
HKDF-SHA256 (0x0001), AEADs AES-128-GCM (0x0001), AES-256-GCM (0x0002),
ChaCha20-Poly1305 (0x0003); mode ``base`` (no PSK, no sender authentication)::

    LabeledExtract(salt, label, ikm)   = HKDF-Extract(salt, "HPKE-v1" || suite_id || label || ikm)
    LabeledExpand(prk, label, info, L) = HKDF-Expand(prk, I2OSP(L, 2) || "HPKE-v1" || suite_id || label || info, L)

    Encap(pkR):     skE, pkE = fresh X25519 pair;  dh = X25519(skE, pkR);  enc = pkE
    Decap(enc, skR): dh = X25519(skR, enc)
    shared_secret = LabeledExpand(LabeledExtract("", "eae_prk", dh), "shared_secret", enc || pkR, 32)
                    (suite_id = "KEM" || kem_id)

    key schedule (suite_id = "HPKE" || kem_id || kdf_id || aead_id):
      context = 0x00 || LabeledExtract("", "psk_id_hash", "") || LabeledExtract("", "info_hash", info)
      secret  = LabeledExtract(shared_secret, "secret", "")
      key, base_nonce, exporter_secret = LabeledExpand(secret, "key" | "base_nonce" | "exp", context, Nk | Nn | 32)
    Seal/Open number s: nonce = base_nonce XOR I2OSP(s, Nn)
    Export(ctx, L)     = LabeledExpand(exporter_secret, "sec", ctx, L)

Built directly on ``cryptography`` (X25519, AEADs) and the standard library's
HMAC-SHA256: every output length here is at most 32 bytes, so HKDF-Expand is a
single HMAC block.  The X25519 part of ``Encap`` does not depend on the message,
so a sender may set it up ahead of use (:func:`setup_sender`) and seal later;
each context seals in sequence and is never reused across requests.  Checked
against RFC 9180 Appendix A.1.1 and RFC 9458 Appendix A (tests/test_ohttp_core.py).
Pure: no I/O, no clock (randomness only for the ephemeral key, unless given).
"""

from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = ["KEM_X25519_SHA256", "KDF_HKDF_SHA256", "AEAD_PARAMS", "Context", "Encapsulation", "HpkeError", "encap",
           "setup_sender", "setup_recipient"]

KEM_X25519_SHA256 = 0x0020
KDF_HKDF_SHA256 = 0x0001
#: AEAD id -> (Nk, Nn) in bytes.
AEAD_PARAMS = {0x0001: (16, 12), 0x0002: (32, 12), 0x0003: (32, 12)}
_CHACHA = 0x0003
_NH = 32
_KEM_SUITE = b"KEM" + struct.pack(">H", KEM_X25519_SHA256)


class HpkeError(ValueError):
    """A decapsulation or open failed (bad key share, tampered ciphertext, wrong key)."""


def _extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.digest(salt or b"\x00" * _NH, ikm, "sha256")


def _labeled_extract(suite: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return _extract(salt, b"HPKE-v1" + suite + label + ikm)


def _labeled_expand(suite: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    if length > _NH:
        raise ValueError("HKDF-Expand here is one block: at most 32 bytes")  # never needed above 32
    full = struct.pack(">H", length) + b"HPKE-v1" + suite + label + info
    return hmac.digest(prk, full + b"\x01", "sha256")[:length]


def _shared_secret(dh: bytes, enc: bytes, pk_r: bytes) -> bytes:
    prk = _labeled_extract(_KEM_SUITE, b"", b"eae_prk", dh)
    return _labeled_expand(_KEM_SUITE, prk, b"shared_secret", enc + pk_r, _NH)


@dataclass
class Context:
    """An HPKE context (either side): seals/opens in sequence, exports secrets."""

    aead_id: int
    key: bytes
    base_nonce: bytes
    exporter_secret: bytes
    suite: bytes
    seq: int = 0
    _cipher: AESGCM | ChaCha20Poly1305 | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return f"hpke.Context(aead=0x{self.aead_id:04x}, seq={self.seq})"

    def _next_nonce(self) -> bytes:
        n = len(self.base_nonce)
        nonce = bytes(a ^ b for a, b in zip(self.base_nonce, self.seq.to_bytes(n, "big")))
        self.seq += 1
        return nonce

    def _aead(self) -> AESGCM | ChaCha20Poly1305:
        if self._cipher is None:
            self._cipher = ChaCha20Poly1305(self.key) if self.aead_id == _CHACHA else AESGCM(self.key)
        return self._cipher

    def seal(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        return self._aead().encrypt(self._next_nonce(), plaintext, aad)

    def open(self, ciphertext: bytes, aad: bytes = b"") -> bytes:
        nonce = self._next_nonce()
        try:
            return self._aead().decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise HpkeError("ciphertext does not open") from None

    def export(self, exporter_context: bytes, length: int) -> bytes:
        """``length`` (at most 32) bytes bound to this context and ``exporter_context``."""
        return _labeled_expand(self.suite, self.exporter_secret, b"sec", exporter_context, length)


def _key_schedule(shared_secret: bytes, info: bytes, kdf_id: int, aead_id: int) -> Context:
    if kdf_id != KDF_HKDF_SHA256 or aead_id not in AEAD_PARAMS:
        raise HpkeError("unsupported HPKE suite")
    nk, nn = AEAD_PARAMS[aead_id]
    suite = b"HPKE" + struct.pack(">HHH", KEM_X25519_SHA256, kdf_id, aead_id)
    ctx = (b"\x00" + _labeled_extract(suite, b"", b"psk_id_hash", b"")
           + _labeled_extract(suite, b"", b"info_hash", info))
    secret = _labeled_extract(suite, shared_secret, b"secret", b"")
    return Context(aead_id, _labeled_expand(suite, secret, b"key", ctx, nk),
                   _labeled_expand(suite, secret, b"base_nonce", ctx, nn),
                   _labeled_expand(suite, secret, b"exp", ctx, _NH), suite)


def _raw_public(sk: X25519PrivateKey) -> bytes:
    return sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class Encapsulation:
    """The message-independent half of a sender's setup: ``enc`` and the KEM shared secret."""

    enc: bytes
    shared_secret: bytes

    def __repr__(self) -> str:
        return "hpke.Encapsulation(...)"


def encap(pk_r: bytes, *, ephemeral_private_key: bytes | None = None) -> Encapsulation:
    """DHKEM(X25519) Encap to the raw 32-byte ``pk_r`` (``ephemeral_private_key``: test vectors only)."""
    sk_e = (X25519PrivateKey.from_private_bytes(ephemeral_private_key) if ephemeral_private_key is not None
            else X25519PrivateKey.generate())
    enc = _raw_public(sk_e)
    try:
        dh = sk_e.exchange(X25519PublicKey.from_public_bytes(pk_r))
    except ValueError:
        raise HpkeError("the recipient's public key is not usable") from None
    return Encapsulation(enc, _shared_secret(dh, enc, pk_r))


def setup_sender(pk_r: bytes, info: bytes, kdf_id: int, aead_id: int, *,
                 encapsulation: Encapsulation | None = None,
                 ephemeral_private_key: bytes | None = None) -> tuple[bytes, Context]:
    """SetupBaseS: (enc, context).  ``encapsulation`` may be made ahead with :func:`encap`
    (it must then be used for this one context only)."""
    e = encapsulation or encap(pk_r, ephemeral_private_key=ephemeral_private_key)
    return e.enc, _key_schedule(e.shared_secret, info, kdf_id, aead_id)


def setup_recipient(enc: bytes, sk_r: X25519PrivateKey, info: bytes, kdf_id: int, aead_id: int, *,
                    pk_r: bytes | None = None) -> Context:
    """SetupBaseR with the recipient's private key (``pk_r``: its public key, if already known);
    :class:`HpkeError` for an unusable ``enc``."""
    if len(enc) != 32:
        raise HpkeError("enc must be 32 bytes")
    try:
        dh = sk_r.exchange(X25519PublicKey.from_public_bytes(enc))
    except ValueError:
        raise HpkeError("the encapsulated key is not usable") from None
    return _key_schedule(_shared_secret(dh, enc, pk_r or _raw_public(sk_r)), info, kdf_id, aead_id)
