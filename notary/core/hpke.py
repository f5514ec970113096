"""HPKE (RFC 9180) base mode, single-shot, for Oblivious HTTP: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256.

Theory of operation.  What RFC 9458 needs of HPKE is one ``Seal`` (sequence
number 0) under a context set up in base mode, and that context's secret
export for the response keys.  So this module computes, per RFC 9180
sections 4.1, 5.1 and 5.3, with ``suite_id`` the KEM's (``"KEM" || kem_id``)
inside the KEM and the HPKE suite's (``"HPKE" || kem_id || kdf_id ||
aead_id``) after it::

    dh            = X25519(skE, pkR)                       (sender; recipient: X25519(skR, enc))
    shared_secret = LabeledExpand(LabeledExtract("", "eae_prk", dh), "shared_secret", enc || pkR, 32)
    context       = 0x00 || LabeledExtract("", "psk_id_hash", "") || LabeledExtract("", "info_hash", info)
    secret        = LabeledExtract(shared_secret, "secret", "")
    key           = LabeledExpand(secret, "key", context, Nk)
    base_nonce    = LabeledExpand(secret, "base_nonce", context, Nn)
    exporter      = LabeledExpand(secret, "exp", context, 32)
    Seal/Open     = AEAD(key, nonce = base_nonce, aad, message)       (sequence number 0 only)
    Export(c, L)  = LabeledExpand(exporter, "sec", c, L)

Every expansion here is at most 32 bytes, one HMAC-SHA256 block, so HKDF is
one ``hmac.digest`` per step.  X25519 and the AEADs come from
``cryptography``; an all-zero X25519 output (a small-order ``enc`` or public
key) is refused, as section 7.1.4 requires.  The RFC 9180 A.1.1 vectors
(``tests/test_hpke.py``) check every step, the exporter included.  Pure: no
I/O, no clock; randomness (the ephemeral key) can be passed in for the RFC
vectors.
"""

from __future__ import annotations

import functools
import hmac
import struct

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

__all__ = ["KEM_X25519_SHA256", "KDF_HKDF_SHA256", "AEAD_AES_128_GCM", "AEAD_AES_256_GCM", "AEAD_CHACHA20_POLY1305",
           "AEAD_NK_NN", "Context", "HpkeError", "setup_sender", "setup_recipient", "private_key", "public_key"]

KEM_X25519_SHA256 = 0x0020
KDF_HKDF_SHA256 = 0x0001
AEAD_AES_128_GCM = 0x0001
AEAD_AES_256_GCM = 0x0002
AEAD_CHACHA20_POLY1305 = 0x0003
#: (key bytes, nonce bytes) of each AEAD.
AEAD_NK_NN = {AEAD_AES_128_GCM: (16, 12), AEAD_AES_256_GCM: (32, 12), AEAD_CHACHA20_POLY1305: (32, 12)}

_V1 = b"HPKE-v1"
_KEM_SUITE = b"KEM" + struct.pack(">H", KEM_X25519_SHA256)
_ZERO32 = bytes(32)


class HpkeError(ValueError):
    """A key exchange or decryption failed (a bad ``enc``, a wrong key, a tampered message)."""


def _extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.digest(salt or _ZERO32, ikm, "sha256")  # HKDF-Extract; an empty salt is Nh zero bytes


def _expand(prk: bytes, info: bytes, length: int) -> bytes:
    # HKDF-Expand for length <= 32: T(1) = HMAC(prk, info || 0x01), truncated.
    return hmac.digest(prk, info + b"\x01", "sha256")[:length]


def _labeled_extract(suite: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return _extract(salt, _V1 + suite + label + ikm)


def _labeled_expand(suite: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    return _expand(prk, struct.pack(">H", length) + _V1 + suite + label + info, length)


@functools.lru_cache(maxsize=64)
def _schedule_context(suite: bytes, info: bytes) -> bytes:
    """``mode || psk_id_hash || info_hash`` (base mode): the same for every message with this ``info``."""
    return b"\x00" + _labeled_extract(suite, b"", b"psk_id_hash", b"") + _labeled_extract(suite, b"", b"info_hash", info)


@functools.lru_cache(maxsize=16)
def private_key(raw: bytes) -> X25519PrivateKey:
    """An X25519 private key object (deserialised once per raw key: a gateway holds three)."""
    return X25519PrivateKey.from_private_bytes(raw)


@functools.lru_cache(maxsize=64)
def public_key(raw: bytes) -> X25519PublicKey:
    """An X25519 public key object (deserialised once per gateway key configuration)."""
    return X25519PublicKey.from_public_bytes(raw)


class Context:
    """An HPKE context after base-mode setup: ``seal``/``open`` at sequence number 0, and ``export``."""

    __slots__ = ("_aead", "_nonce", "_exporter", "_suite")

    def __init__(self, suite: bytes, aead: int, key: bytes, base_nonce: bytes, exporter: bytes) -> None:
        self._aead = ChaCha20Poly1305(key) if aead == AEAD_CHACHA20_POLY1305 else AESGCM(key)
        self._nonce, self._exporter, self._suite = base_nonce, exporter, suite

    def seal(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        return self._aead.encrypt(self._nonce, plaintext, aad)

    def open(self, ciphertext: bytes, aad: bytes = b"") -> bytes:
        """Decrypt, or :class:`HpkeError` (tampered, or sealed under another context)."""
        try:
            return self._aead.decrypt(self._nonce, ciphertext, aad)
        except Exception:  # cryptography's InvalidTag
            raise HpkeError("decryption failed") from None

    def export(self, exporter_context: bytes, length: int) -> bytes:
        """``Export(exporter_context, length)``, ``length`` at most 32 bytes."""
        if not 0 < length <= 32:
            raise ValueError("this HPKE exports at most 32 bytes")
        return _labeled_expand(self._suite, self._exporter, b"sec", exporter_context, length)

    def __repr__(self) -> str:
        return "hpke.Context(...)"  # never the keys


def _context(kdf: int, aead: int, shared: bytes, info: bytes) -> Context:
    if kdf != KDF_HKDF_SHA256 or aead not in AEAD_NK_NN:
        raise HpkeError("unsupported HPKE suite")
    nk, nn = AEAD_NK_NN[aead]
    suite = b"HPKE" + struct.pack(">HHH", KEM_X25519_SHA256, kdf, aead)
    ksc = _schedule_context(suite, info)
    secret = _labeled_extract(suite, shared, b"secret", b"")
    return Context(suite, aead, _labeled_expand(suite, secret, b"key", ksc, nk),
                   _labeled_expand(suite, secret, b"base_nonce", ksc, nn),
                   _labeled_expand(suite, secret, b"exp", ksc, 32))


def _shared_secret(dh: bytes, enc: bytes, pkr: bytes) -> bytes:
    if dh == _ZERO32:
        raise HpkeError("X25519 produced the all-zero value")
    prk = _labeled_extract(_KEM_SUITE, b"", b"eae_prk", dh)
    return _labeled_expand(_KEM_SUITE, prk, b"shared_secret", enc + pkr, 32)


def _exchange(sk: X25519PrivateKey, pk: X25519PublicKey) -> bytes:
    try:
        return sk.exchange(pk)
    except ValueError:  # cryptography refuses a small-order point itself
        raise HpkeError("X25519 produced the all-zero value") from None


def setup_sender(pkr: bytes, info: bytes, kdf: int, aead: int, *,
                 ephemeral: X25519PrivateKey | None = None) -> tuple[bytes, Context]:
    """``SetupBaseS(pkR, info)``: (enc, context).  ``ephemeral`` fixes skE (the RFC vectors only)."""
    try:
        pk = public_key(pkr)
    except ValueError:
        raise HpkeError("bad X25519 public key") from None
    eph = ephemeral if ephemeral is not None else X25519PrivateKey.generate()
    enc = eph.public_key().public_bytes_raw()
    return enc, _context(kdf, aead, _shared_secret(_exchange(eph, pk), enc, pkr), info)


def setup_recipient(enc: bytes, skr: X25519PrivateKey, pkr: bytes, info: bytes, kdf: int, aead: int) -> Context:
    """``SetupBaseR(enc, skR, info)``; ``pkr`` is skR's public key (its raw bytes, as the key configuration lists it)."""
    try:
        pke = X25519PublicKey.from_public_bytes(enc)
    except ValueError:
        raise HpkeError("bad encapsulated key") from None
    return _context(kdf, aead, _shared_secret(_exchange(skr, pke), enc, pkr), info)
