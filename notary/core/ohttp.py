"""Oblivious HTTP (RFC 9458): key configurations and request/response encapsulation.

Theory of operation.  A gateway publishes *key configurations* (section 3):
a one-byte key id, an HPKE KEM id, the public key, and the (KDF, AEAD) pairs
it accepts.  ``application/ohttp-keys`` (section 3.2, RFC 9540) is a list of
them, each prefixed by a two-byte length.

A client encapsulates a Binary HTTP request (section 4.3)::

    hdr  = key_id(1) || kem_id(2) || kdf_id(2) || aead_id(2)
    info = "message/bhttp request" || 0x00 || hdr
    enc, ctx = HPKE SetupBaseS(pkR, info)
    encapsulated request = hdr || enc || ctx.Seal(aad="", request)

and the gateway answers (section 4.4) with keys derived from the HPKE
context's *exporter*, so only the holder of that request's context can read it::

    secret   = ctx.Export("message/bhttp response", max(Nn, Nk))
    nonce    = random(max(Nn, Nk))
    prk      = Extract(salt = enc || nonce, ikm = secret)
    key, iv  = Expand(prk, "key", Nk), Expand(prk, "nonce", Nn)
    encapsulated response = nonce || AEAD.Seal(key, iv, aad="", response)

HPKE (RFC 9180, base mode) and the response's HKDF (one SHA-256 block per step) are
:mod:`notary.core.hpke`'s; the response's AEAD is ``cryptography``'s.  Supported: KEM DHKEM(X25519, HKDF-SHA256) (0x0020),
KDF HKDF-SHA256 (0x0001), AEADs AES-128-GCM (0x0001), AES-256-GCM (0x0002)
and ChaCha20-Poly1305 (0x0003).

Every failure (truncated, tampered, unknown key id, unsupported suite, wrong
key) raises :class:`~notary.errors.OhttpError` with a stable ``code``; a
gateway turns it into a 400.  Randomness (the client's ephemeral key, the
gateway's response nonce) can be passed in so that the RFC's Appendix A is
reproducible byte for byte.  Pure: no I/O, no clock.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Iterable, Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from notary.core import hpke
from notary.core.hpke import (AEAD_AES_128_GCM, AEAD_AES_256_GCM, AEAD_CHACHA20_POLY1305, AEAD_NK_NN as _AEAD_NK_NN,
                              KDF_HKDF_SHA256, KEM_X25519_SHA256)
from notary.errors import OhttpError

__all__ = [
    "KEM_X25519_SHA256", "KDF_HKDF_SHA256", "AEAD_AES_128_GCM", "AEAD_AES_256_GCM", "AEAD_CHACHA20_POLY1305",
    "KeyConfig", "GatewayKey", "ClientContext", "ServerContext", "encode_keys", "decode_keys",
    "encapsulate_request", "decapsulate_request", "encapsulate_response", "decapsulate_response",
    "REQUEST_MEDIA_TYPE", "RESPONSE_MEDIA_TYPE", "KEYS_MEDIA_TYPE",
]

REQUEST_MEDIA_TYPE = "message/ohttp-req"
RESPONSE_MEDIA_TYPE = "message/ohttp-res"
KEYS_MEDIA_TYPE = "application/ohttp-keys"

_NPK = {KEM_X25519_SHA256: 32}
_TAG = 16
_REQ_LABEL = b"message/bhttp request"
_RES_LABEL = b"message/bhttp response"


@dataclass(frozen=True, slots=True)
class KeyConfig:
    """One key configuration (RFC 9458 section 3.1).  ``suites`` are (kdf_id, aead_id) pairs."""

    key_id: int
    kem_id: int
    public_key: bytes
    suites: tuple[tuple[int, int], ...]

    def encode(self) -> bytes:
        if not 0 <= self.key_id <= 255 or not self.suites or len(self.suites) > 16383:
            raise ValueError("key id is one byte and a config lists 1..16383 suites")
        algs = b"".join(struct.pack(">HH", kdf, aead) for kdf, aead in self.suites)
        return struct.pack(">BH", self.key_id, self.kem_id) + self.public_key + struct.pack(">H", len(algs)) + algs

    @classmethod
    def decode(cls, data: bytes) -> "KeyConfig":
        cfg, rest = cls._decode_prefix(data)
        if rest:
            raise OhttpError("key configuration has trailing bytes", "bad_key_config")
        return cfg

    @classmethod
    def _decode_prefix(cls, data: bytes) -> tuple["KeyConfig", bytes]:
        if len(data) < 3:
            raise OhttpError("key configuration truncated", "bad_key_config")
        key_id, kem_id = struct.unpack(">BH", data[:3])
        npk = _NPK.get(kem_id)
        if npk is None:
            raise OhttpError(f"key configuration names unsupported KEM 0x{kem_id:04x}", "unsupported_suite")
        if len(data) < 3 + npk + 2:
            raise OhttpError("key configuration truncated", "bad_key_config")
        pk = bytes(data[3:3 + npk])
        (alen,) = struct.unpack(">H", data[3 + npk:5 + npk])
        if alen < 4 or alen % 4 or len(data) < 5 + npk + alen:
            raise OhttpError("key configuration has a bad algorithms length", "bad_key_config")
        algs = data[5 + npk:5 + npk + alen]
        suites = tuple(struct.unpack(">HH", algs[i:i + 4]) for i in range(0, alen, 4))
        return cls(key_id, kem_id, pk, suites), bytes(data[5 + npk + alen:])

    def choose_suite(self) -> tuple[int, int]:
        """The first (kdf, aead) pair this implementation supports."""
        for kdf, aead in self.suites:
            if kdf == KDF_HKDF_SHA256 and aead in _AEAD_NK_NN:
                return kdf, aead
        raise OhttpError("no mutually supported HPKE KDF and AEAD", "unsupported_suite")


def encode_keys(configs: Iterable[KeyConfig]) -> bytes:
    """``application/ohttp-keys``: each configuration prefixed by its two-byte length."""
    out = b""
    for c in configs:
        raw = c.encode()
        out += struct.pack(">H", len(raw)) + raw
    return out


def decode_keys(data: bytes, *, skip_unsupported: bool = True) -> tuple[KeyConfig, ...]:
    """Parse ``application/ohttp-keys``.  Configurations with an unknown KEM are skipped
    (RFC 9458 section 3.2) unless ``skip_unsupported`` is false."""
    out: list[KeyConfig] = []
    pos = 0
    while pos < len(data):
        if pos + 2 > len(data):
            raise OhttpError("key list truncated", "bad_key_config")
        (n,) = struct.unpack(">H", data[pos:pos + 2])
        chunk = data[pos + 2:pos + 2 + n]
        if len(chunk) != n or n == 0:
            raise OhttpError("key list truncated", "bad_key_config")
        pos += 2 + n
        try:
            out.append(KeyConfig.decode(chunk))
        except OhttpError as exc:
            if exc.code != "unsupported_suite" or not skip_unsupported:
                raise
    return tuple(out)


@dataclass(frozen=True)
class GatewayKey:
    """A gateway's private key with its configuration.  Never printed: ``repr`` hides the key."""

    config: KeyConfig
    private_key: bytes

    def __repr__(self) -> str:
        return f"GatewayKey(key_id={self.config.key_id})"

    @classmethod
    def generate(cls, key_id: int, private_key: bytes | None = None,
                 suites: tuple[tuple[int, int], ...] = ((KDF_HKDF_SHA256, AEAD_AES_128_GCM),)) -> "GatewayKey":
        """A DHKEM(X25519) key (random unless ``private_key`` is given) with ``suites``."""
        sk = X25519PrivateKey.from_private_bytes(private_key) if private_key is not None else X25519PrivateKey.generate()
        raw_sk = sk.private_bytes_raw()
        pk = sk.public_key().public_bytes_raw()
        return cls(KeyConfig(key_id, KEM_X25519_SHA256, pk, tuple(suites)), raw_sk)


@dataclass(frozen=True)
class ClientContext:
    """What a client keeps to open the response: the HPKE context, ``enc`` and the AEAD."""

    ctx: hpke.Context
    enc: bytes
    aead_id: int


@dataclass(frozen=True)
class ServerContext:
    """What a gateway keeps to encrypt the response to one request."""

    ctx: hpke.Context
    enc: bytes
    aead_id: int
    key_id: int


def _header(key_id: int, kem: int, kdf: int, aead: int) -> bytes:
    return struct.pack(">BHHH", key_id, kem, kdf, aead)


def encapsulate_request(config: KeyConfig, request: bytes, *,
                        ephemeral_private_key: bytes | None = None) -> tuple[bytes, ClientContext]:
    """Encrypt a Binary HTTP ``request`` to ``config``'s public key (section 4.3).

    ``ephemeral_private_key`` fixes the HPKE ephemeral key (tests only: RFC 9458 Appendix A).
    """
    kdf, aead = config.choose_suite()
    hdr = _header(config.key_id, config.kem_id, kdf, aead)
    try:
        enc, ctx = hpke.setup_sender(config.public_key, _REQ_LABEL + b"\x00" + hdr, kdf, aead,
                                     ephemeral=ephemeral_private_key)
    except hpke.HpkeError as exc:
        raise OhttpError(f"gateway key configuration unusable: {exc}", "bad_key_config") from None
    return hdr + enc + ctx.seal(request), ClientContext(ctx, enc, aead)


def decapsulate_request(keys: Mapping[int, GatewayKey], data: bytes) -> tuple[bytes, ServerContext]:
    """Decrypt an encapsulated request with the key its key id names (section 4.3)."""
    if len(data) < 7:
        raise OhttpError("encapsulated request truncated", "bad_ohttp")
    key_id, kem, kdf, aead = struct.unpack(">BHHH", data[:7])
    key = keys.get(key_id)
    if key is None:
        raise OhttpError(f"unknown key id {key_id}", "unknown_key")
    if kem != key.config.kem_id or (kdf, aead) not in key.config.suites or aead not in _AEAD_NK_NN:
        raise OhttpError("encapsulated request names a suite this key does not accept", "unsupported_suite")
    npk = _NPK[kem]
    if len(data) < 7 + npk + _TAG:
        raise OhttpError("encapsulated request truncated", "bad_ohttp")
    enc, ct = bytes(data[7:7 + npk]), bytes(data[7 + npk:])
    try:
        ctx = hpke.setup_recipient(enc, key.private_key, key.config.public_key,
                                   _REQ_LABEL + b"\x00" + bytes(data[:7]), kdf, aead)
        plain = ctx.open(ct)
    except hpke.HpkeError as exc:
        raise OhttpError(f"encapsulated request does not decrypt ({type(exc).__name__})", "decrypt_failed") from None
    return plain, ServerContext(ctx, enc, aead, key_id)


def _response_keys(ctx: hpke.Context, enc: bytes, aead: int, nonce: bytes) -> tuple[bytes, bytes]:
    nk, nn = _AEAD_NK_NN[aead]
    secret = ctx.export(_RES_LABEL, max(nn, nk))
    prk = hpke.hkdf_extract(enc + nonce, secret)
    key = hpke.hkdf_expand(prk, b"key", nk)
    iv = hpke.hkdf_expand(prk, b"nonce", nn)
    return key, iv


def _aead(aead: int, key: bytes) -> AESGCM | ChaCha20Poly1305:
    return ChaCha20Poly1305(key) if aead == AEAD_CHACHA20_POLY1305 else AESGCM(key)


def encapsulate_response(server: ServerContext, response: bytes, *, nonce: bytes | None = None) -> bytes:
    """Encrypt a Binary HTTP ``response`` for the request ``server`` came from (section 4.4)."""
    nk, nn = _AEAD_NK_NN[server.aead_id]
    if nonce is None:
        nonce = os.urandom(max(nk, nn))
    if len(nonce) != max(nk, nn):
        raise ValueError("response nonce has the wrong length")
    key, iv = _response_keys(server.ctx, server.enc, server.aead_id, nonce)
    return nonce + _aead(server.aead_id, key).encrypt(iv, response, b"")


def decapsulate_response(client: ClientContext, data: bytes) -> bytes:
    """Decrypt an encapsulated response with the context of the request it answers."""
    nk, nn = _AEAD_NK_NN[client.aead_id]
    n = max(nk, nn)
    if len(data) < n + _TAG:
        raise OhttpError("encapsulated response truncated", "bad_ohttp")
    key, iv = _response_keys(client.ctx, client.enc, client.aead_id, bytes(data[:n]))
    try:
        return _aead(client.aead_id, key).decrypt(iv, bytes(data[n:]), b"")
    except InvalidTag:
        raise OhttpError("encapsulated response does not decrypt", "decrypt_failed") from None
