"""notary.core.hpke: our HPKE base mode, against RFC 9180 Appendix A.1.1 and against pyhpke.

The A.1.1 values are the RFC's (imported from tests/test_ohttp_core.py, where they
are copied from the RFC text), never computed by the code under test.
"""

from __future__ import annotations

import os

import pyhpke
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from nacl.bindings import crypto_scalarmult_base

from notary.core import hpke
from tests.test_ohttp_core import A1_ENCRYPTIONS, A1_EXPORTS, A1_INFO, A1_PKEM, A1_PKRM, A1_PT, A1_SKEM, A1_SKRM

SUITES = [(hpke.KDF_HKDF_SHA256, a) for a in (hpke.AEAD_AES_128_GCM, hpke.AEAD_AES_256_GCM, hpke.AEAD_CHACHA20_POLY1305)]


def test_rfc9180_a11_sender_enc_first_ciphertext_and_exports() -> None:
    enc, ctx = hpke.setup_sender(A1_PKRM, A1_INFO, hpke.KDF_HKDF_SHA256, hpke.AEAD_AES_128_GCM,
                                 ephemeral=A1_SKEM)
    assert enc == A1_PKEM
    seq, aad, ct = A1_ENCRYPTIONS[0]
    assert seq == 0 and ctx.seal(A1_PT, aad) == ct  # Oblivious HTTP seals once: sequence number 0
    for context, value in A1_EXPORTS:
        assert ctx.export(context, 32) == value


def test_rfc9180_a11_recipient_opens_first_ciphertext_and_exports() -> None:
    ctx = hpke.setup_recipient(A1_PKEM, A1_SKRM, A1_PKRM, A1_INFO,
                               hpke.KDF_HKDF_SHA256, hpke.AEAD_AES_128_GCM)
    _, aad, ct = A1_ENCRYPTIONS[0]
    assert ctx.open(ct, aad) == A1_PT
    for context, value in A1_EXPORTS:
        assert ctx.export(context, 32) == value
    with pytest.raises(hpke.HpkeError):
        ctx.open(ct, b"another aad")
    with pytest.raises(hpke.HpkeError):
        ctx.open(ct[:-1] + bytes([ct[-1] ^ 1]), aad)


@pytest.mark.parametrize("kdf,aead", SUITES)
def test_interoperates_with_pyhpke_both_ways(kdf: int, aead: int) -> None:
    suite = pyhpke.CipherSuite.new(pyhpke.KEMId(hpke.KEM_X25519_SHA256), pyhpke.KDFId(kdf), pyhpke.AEADId(aead))
    skr = X25519PrivateKey.generate()
    skr_raw, pkr = skr.private_bytes_raw(), skr.public_key().public_bytes_raw()
    info, msg = os.urandom(20), os.urandom(100)
    # ours -> pyhpke
    enc, ours = hpke.setup_sender(pkr, info, kdf, aead)
    theirs = suite.create_recipient_context(enc, suite.kem.deserialize_private_key(skr_raw), info)
    assert theirs.open(ours.seal(msg, b"a"), b"a") == msg
    assert theirs.export(b"x", 32) == ours.export(b"x", 32)
    # pyhpke -> ours
    enc2, sender = suite.create_sender_context(suite.kem.deserialize_public_key(pkr), info)
    ctx = hpke.setup_recipient(enc2, skr_raw, pkr, info, kdf, aead)
    assert ctx.open(sender.seal(msg)) == msg
    assert ctx.export(b"message/bhttp response", 16) == sender.export(b"message/bhttp response", 16)


def test_small_order_enc_and_bad_keys_refused() -> None:
    sk = A1_SKRM
    with pytest.raises(hpke.HpkeError):
        hpke.setup_recipient(bytes(32), sk, A1_PKRM, b"", hpke.KDF_HKDF_SHA256, hpke.AEAD_AES_128_GCM)
    with pytest.raises(hpke.HpkeError):
        hpke.setup_recipient(b"\x01" * 31, sk, A1_PKRM, b"", hpke.KDF_HKDF_SHA256, hpke.AEAD_AES_128_GCM)
    with pytest.raises(hpke.HpkeError):
        hpke.setup_sender(bytes(32), b"", hpke.KDF_HKDF_SHA256, hpke.AEAD_AES_128_GCM)
    with pytest.raises(hpke.HpkeError):
        hpke.setup_sender(A1_PKRM, b"", hpke.KDF_HKDF_SHA256, 0x0099)
    _, ctx = hpke.setup_sender(A1_PKRM, b"", hpke.KDF_HKDF_SHA256, hpke.AEAD_AES_128_GCM)
    with pytest.raises(ValueError):
        ctx.export(b"", 33)
    assert repr(ctx) == "hpke.Context(...)"  # never the keys


def test_a_context_seals_once() -> None:
    """Sequence number 0 is the only one this HPKE supports: a second seal would reuse the AEAD nonce."""
    pkr = crypto_scalarmult_base(bytes(range(1, 33)))
    _, ctx = hpke.setup_sender(pkr, b"info", hpke.KDF_HKDF_SHA256, hpke.AEAD_AES_128_GCM)
    ctx.seal(b"one")
    with pytest.raises(hpke.HpkeError, match="sealed"):
        ctx.seal(b"two")
