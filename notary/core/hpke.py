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
one ``hmac.digest`` per step.  X25519 is libsodium's (PyNaCl, which the
notary's Ed25519 signatures use too: its fixed-base multiplication, the
ephemeral key, takes half the time of ``cryptography``'s key generation), the
AEADs ``cryptography``'s; an all-zero X25519 output (a small-order ``enc`` or
public key) is refused, as section 7.1.4 requires.  The RFC 9180 A.1.1 vectors
(``tests/test_hpke.py``) check every step, the exporter included.  Pure: no
I/O, no clock; randomness (the ephemeral key) can be passed in for the RFC
vectors.
"""

from __future__ import annotations

import functools
import hmac
import os
import struct

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base
from nacl.exceptions import CryptoError

__all__ = ["KEM_X25519_SHA256", "KDF_HKDF_SHA256", "AEAD_AES_128_GCM", "AEAD_AES_256_GCM", "AEAD_CHACHA20_POLY1305",
           "AEAD_NK_NN", "Context", "HpkeError", "setup_sender", "setup_recipient", "hkdf_extract",
           "hkdf_expand"]

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


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract with SHA-256 (RFC 5869); an empty salt is 32 zero bytes."""
    return hmac.digest(salt or _ZERO32, ikm, "sha256")  # HKDF-Extract; an empty salt is Nh zero bytes


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand with SHA-256 to ``length`` <= 32 bytes: one block, T(1) = HMAC(prk, info || 0x01), truncated."""
    if not 0 < length <= 32:
        raise ValueError("one HKDF-SHA256 block: at most 32 bytes")
    return hmac.digest(prk, info + b"\x01", "sha256")[:length]


def _labeled_extract(suite: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return hkdf_extract(salt, _V1 + suite + label + ikm)


def _labeled_expand(suite: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    return hkdf_expand(prk, struct.pack(">H", length) + _V1 + suite + label + info, length)


@functools.lru_cache(maxsize=64)
def _schedule_context(suite: bytes, info: bytes) -> bytes:
    """``mode || psk_id_hash || info_hash`` (base mode): the same for every message with this ``info``."""
    return b"\x00" + _labeled_extract(suite, b"", b"psk_id_hash", b"") + _labeled_extract(suite, b"", b"info_hash", info)


class Context:
    """An HPKE context after base-mode setup: ``seal``/``open`` at sequence number 0, and ``export``.

    A context seals once: a second ``seal`` would reuse the AEAD nonce (sequence
    number 0 again) and is refused with :class:`HpkeError`.
    """

    __slots__ = ("_aead", "_nonce", "_exporter", "_suite", "_sealed")

    def __init__(self, suite: bytes, aead: int, key: bytes, base_nonce: bytes, exporter: bytes) -> None:
        self._aead = ChaCha20Poly1305(key) if aead == AEAD_CHACHA20_POLY1305 else AESGCM(key)
        self._nonce, self._exporter, self._suite = base_nonce, exporter, suite
        self._sealed = False

    def seal(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        """Encrypt at sequence number 0: once per context (a second call raises :class:`HpkeError`)."""
        if self._sealed:
            raise HpkeError("this HPKE context has sealed its one message (a second would reuse the nonce)")
        self._sealed = True
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


def _x25519(sk: bytes, pk: bytes, what: str) -> bytes:
    """X25519(sk, pk) (RFC 7748; the scalar is clamped), refusing a bad length or an all-zero result."""
    if len(sk) != 32 or len(pk) != 32:
        raise HpkeError(f"bad X25519 {what}")
    try:
        return crypto_scalarmult(sk, pk)
    except CryptoError:  # libsodium refuses a small-order point (an all-zero result) itself
        raise HpkeError("X25519 produced the all-zero value") from None


def setup_sender(pkr: bytes, info: bytes, kdf: int, aead: int, *, ephemeral: bytes | None = None) -> tuple[bytes, Context]:
    """``SetupBaseS(pkR, info)``: (enc, context).  ``ephemeral`` fixes skE (the RFC vectors only)."""
    eph = ephemeral if ephemeral is not None else os.urandom(32)  # any 32 bytes are an X25519 private key
    if len(eph) != 32:
        raise HpkeError("bad X25519 ephemeral key")
    dh = _x25519(eph, pkr, "public key")
    enc = crypto_scalarmult_base(eph)
    return enc, _context(kdf, aead, _shared_secret(dh, enc, pkr), info)


def setup_recipient(enc: bytes, skr: bytes, pkr: bytes, info: bytes, kdf: int, aead: int) -> Context:
    """``SetupBaseR(enc, skR, info)``; ``pkr`` is skR's public key (its raw bytes, as the key configuration lists it)."""
    return _context(kdf, aead, _shared_secret(_x25519(skr, enc, "encapsulated key"), enc, pkr), info)
