"""Binary HTTP (RFC 9292), Oblivious HTTP (RFC 9458) and the HPKE under them (RFC 9180).

Every expected value below is copied from the RFC texts (hex dumps as printed
there), never computed by the code under test:

* RFC 9180 Appendix A.1.1 (DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM,
  base mode), from the CFRG draft's final text;
* RFC 9458 Appendix A ("Complete Example of a Request and Response");
* RFC 9292 section 5 (Figures 8, 9, 11 and 13).
"""

from __future__ import annotations

import pyhpke
import pytest

from notary.core import bhttp, ohttp
from notary.errors import InputError, OhttpError, ParallaxError


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


# -- RFC 9180 Appendix A.1.1 -----------------------------------------------------------------

A1_INFO = h("4f6465206f6e2061204772656369616e2055726e")
A1_SKEM = h("52c4a758a802cd8b936eceea314432798d5baf2d7e9235dc084ab1b9cfa2f736")
A1_PKEM = h("37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431")
A1_SKRM = h("4612c550263fc8ad58375df3f557aac531d26850903e55a9f23f21d8534e8ac8")
A1_PKRM = h("3948cfe0ad1ddb695d780e59077195da6c56506b027329794ab02bca80815c4d")
A1_PT = h("4265617574792069732074727574682c20747275746820626561757479")
A1_ENCRYPTIONS = [  # (sequence number, aad, ct)
    (0, h("436f756e742d30"), h("f938558b5d72f1a23810b4be2ab4f84331acc02fc97babc53a52ae8218a355a9 6d8770ac83d07bea87e13c512a")),
    (1, h("436f756e742d31"), h("af2d7e9ac9ae7e270f46ba1f975be53c09f8d875bdc8535458c2494e8a6eab25 1c03d0c22a56b8ca42c2063b84")),
    (2, h("436f756e742d32"), h("498dfcabd92e8acedc281e85af1cb4e3e31c7dc394a1ca20e173cb7251649158 8d96a19ad4a683518973dcc180")),
]
A1_EXPORTS = [
    (b"", h("3853fe2b4035195a573ffc53856e77058e15d9ea064de3e59f4961d0095250ee")),
    (h("00"), h("2e8f0b54673c7029649d4eb9d5e33bf1872cf76d623ff164ac185da9e88c21a5")),
    (h("54657374436f6e74657874"), h("e9e43065102c3836401bed8c3c3c75ae46be1639869391d62c61f1ec7af54931")),
]


def _a1_suite() -> pyhpke.CipherSuite:
    return pyhpke.CipherSuite.new(pyhpke.KEMId.DHKEM_X25519_HKDF_SHA256, pyhpke.KDFId.HKDF_SHA256, pyhpke.AEADId.AES128_GCM)


def test_hpke_rfc9180_a11_sender_reproduces_enc_ciphertexts_and_exports() -> None:
    suite = _a1_suite()
    eks = pyhpke.KEMKeyPair(suite.kem.deserialize_private_key(A1_SKEM), suite.kem.deserialize_public_key(A1_PKEM))
    enc, ctx = suite.create_sender_context(suite.kem.deserialize_public_key(A1_PKRM), A1_INFO, eks=eks)
    assert enc == A1_PKEM
    for seq in range(3):  # sequence numbers 0, 1, 2 in order
        _, aad, ct = A1_ENCRYPTIONS[seq]
        assert ctx.seal(A1_PT, aad) == ct
    for context, value in A1_EXPORTS:
        assert ctx.export(context, 32) == value


def test_hpke_rfc9180_a11_recipient_opens_and_exports() -> None:
    suite = _a1_suite()
    ctx = suite.create_recipient_context(A1_PKEM, suite.kem.deserialize_private_key(A1_SKRM), A1_INFO)
    for _, aad, ct in A1_ENCRYPTIONS:
        assert ctx.open(ct, aad) == A1_PT
    for context, value in A1_EXPORTS:
        assert ctx.export(context, 32) == value


# -- RFC 9458 Appendix A -----------------------------------------------------------------------

SKR = h("3c168975674b2fa8e465970b79c8dcf09f1c741626480bd4c6162fc5b6a98e1a")
KEY_CONFIG = h("01002031e1f05a740102115220e9af918f738674aec95f54db6e04eb705aae8e 79815500080001000100010003")
REQUEST = h("00034745540568747470730b6578616d706c652e636f6d012f")
SKE = h("bc51d5e930bda26589890ac7032f70ad12e4ecb37abb1b65b1256c9c48999c73")
ENC_REQUEST = h("""010020000100014b28f881333e7c164ffc499ad9796f877f4e1051ee6d31bad1
                   9dec96c208b4726374e469135906992e1268c594d2a10c695d858c40a026e796
                   5e7d86b83dd440b2c0185204b4d63525""")
RESPONSE = h("0140c8")
RESPONSE_NONCE = h("c789e7151fcba46158ca84b04464910d")
ENC_RESPONSE = h("c789e7151fcba46158ca84b04464910d86f9013e404feea014e7be4a441f234f 857fbd")


def _rfc_key() -> ohttp.GatewayKey:
    cfg = ohttp.KeyConfig.decode(KEY_CONFIG)
    return ohttp.GatewayKey.generate(cfg.key_id, SKR, cfg.suites)


def test_rfc9458_key_config_decodes_and_reencodes() -> None:
    cfg = ohttp.KeyConfig.decode(KEY_CONFIG)
    assert (cfg.key_id, cfg.kem_id) == (1, 0x0020)
    assert cfg.suites == ((1, 1), (1, 3))
    assert cfg.encode() == KEY_CONFIG
    assert _rfc_key().config == cfg  # the public key is the one derived from the secret key


def test_rfc9458_request_encapsulated_byte_for_byte() -> None:
    enc, _ = ohttp.encapsulate_request(ohttp.KeyConfig.decode(KEY_CONFIG), REQUEST, ephemeral_private_key=SKE)
    assert enc == ENC_REQUEST


def test_rfc9458_gateway_decrypts_and_encapsulates_the_response_byte_for_byte() -> None:
    plain, server = ohttp.decapsulate_request({1: _rfc_key()}, ENC_REQUEST)
    assert plain == REQUEST
    req = bhttp.decode_request(plain)
    assert (req.method, req.scheme, req.authority, req.path) == ("GET", "https", "example.com", "/")
    assert ohttp.encapsulate_response(server, RESPONSE, nonce=RESPONSE_NONCE) == ENC_RESPONSE


def test_rfc9458_client_decrypts_the_response() -> None:
    _, client = ohttp.encapsulate_request(ohttp.KeyConfig.decode(KEY_CONFIG), REQUEST, ephemeral_private_key=SKE)
    plain = ohttp.decapsulate_response(client, ENC_RESPONSE)
    assert plain == RESPONSE
    assert bhttp.decode_response(plain).status == 200


def test_ohttp_keys_list_roundtrip_and_skips_unknown_kem() -> None:
    a, b = ohttp.GatewayKey.generate(7).config, ohttp.GatewayKey.generate(8).config
    raw = ohttp.encode_keys([a, b])
    assert ohttp.decode_keys(raw) == (a, b)
    unknown = b"\x09\x00\x10" + b"\x00" * 65 + b"\x00\x04\x00\x01\x00\x01"  # P-256 (0x0010): not supported here
    mixed = len(unknown).to_bytes(2, "big") + unknown + raw
    assert ohttp.decode_keys(mixed) == (a, b)
    with pytest.raises(OhttpError):
        ohttp.decode_keys(mixed, skip_unsupported=False)
    with pytest.raises(OhttpError):
        ohttp.decode_keys(raw[:-1])


# -- rejections ---------------------------------------------------------------------------------

def _fresh() -> tuple[ohttp.GatewayKey, bytes, ohttp.ClientContext]:
    key = ohttp.GatewayKey.generate(3)
    enc, client = ohttp.encapsulate_request(key.config, bhttp.encode_request(bhttp.Request("GET", "https", "", "/v1/notary")))
    return key, enc, client


@pytest.mark.parametrize("where", [0, 7, 20, 39, 45, -1])
def test_tampered_request_rejected_with_a_400_class_error(where: int) -> None:
    key, enc, _ = _fresh()
    bad = bytearray(enc)
    bad[where] ^= 0x01
    with pytest.raises(OhttpError) as exc:
        ohttp.decapsulate_request({3: key}, bytes(bad))
    assert isinstance(exc.value, InputError) and isinstance(exc.value, ParallaxError)
    assert exc.value.code in ("unknown_key", "decrypt_failed", "unsupported_suite")


@pytest.mark.parametrize("cut", [0, 1, 6, 7, 30, 39, 55])
def test_truncated_request_rejected(cut: int) -> None:
    key, enc, _ = _fresh()
    with pytest.raises(OhttpError):
        ohttp.decapsulate_request({3: key}, enc[:cut])


def test_wrong_key_id_and_wrong_key_rejected() -> None:
    key, enc, _ = _fresh()
    with pytest.raises(OhttpError) as exc:
        ohttp.decapsulate_request({4: ohttp.GatewayKey.generate(4)}, enc)
    assert exc.value.code == "unknown_key"
    impostor = ohttp.GatewayKey.generate(3)  # same id, different private key
    with pytest.raises(OhttpError) as exc:
        ohttp.decapsulate_request({3: impostor}, enc)
    assert exc.value.code == "decrypt_failed"


def test_tampered_or_truncated_or_foreign_response_rejected() -> None:
    key, enc, client = _fresh()
    _, server = ohttp.decapsulate_request({3: key}, enc)
    resp = ohttp.encapsulate_response(server, bhttp.encode_response(bhttp.Response(200, content=b"{}")))
    assert bhttp.decode_response(ohttp.decapsulate_response(client, resp)).content == b"{}"
    for bad in (resp[:-1], resp[:20], resp[:-3] + bytes([resp[-3] ^ 1]) + resp[-2:], bytes([resp[0] ^ 1]) + resp[1:]):
        with pytest.raises(OhttpError):
            ohttp.decapsulate_response(client, bad)
    _, _, other_client = _fresh()  # a response meant for another request's context
    with pytest.raises(OhttpError):
        ohttp.decapsulate_response(other_client, resp)


def test_gateway_key_repr_hides_the_private_key() -> None:
    key = ohttp.GatewayKey.generate(5)
    assert key.private_key.hex() not in repr(key) and str(key.private_key) not in repr(key)


# -- RFC 9292 section 5 ------------------------------------------------------------------------

FIG8 = h("""00034745 54056874 74707300 0a2f6865 6c6c6f2e 74787440 6c0a7573 65722d61
            67656e74 34637572 6c2f372e 31362e33 206c6962 6375726c 2f372e31 362e3320
            4f70656e 53534c2f 302e392e 376c207a 6c69622f 312e322e 3304686f 73740f77
            77772e65 78616d70 6c652e63 6f6d0f61 63636570 742d6c61 6e677561 67650665
            6e2c206d 690000""")
FIG9 = h("""02034745 54056874 74707300 0a2f6865 6c6c6f2e 7478740a 75736572 2d616765
            6e743463 75726c2f 372e3136 2e33206c 69626375 726c2f37 2e31362e 33204f70
            656e5353 4c2f302e 392e376c 207a6c69 622f312e 322e3304 686f7374 0f777777
            2e657861 6d706c65 2e636f6d 0f616363 6570742d 6c616e67 75616765 06656e2c
            206d6900 00000000 00000000 00000000""")
FIG11 = h("""03406607 72756e6e 696e670a 22736c65 65702031 35220040 67046c69 6e6b233c
             2f737479 6c652e63 73733e3b 2072656c 3d707265 6c6f6164 3b206173 3d737479
             6c65046c 696e6b24 3c2f7363 72697074 2e6a733e 3b207265 6c3d7072 656c6f61
             643b2061 733d7363 72697074 0040c804 64617465 1d4d6f6e 2c203237 204a756c
             20323030 39203132 3a32383a 35332047 4d540673 65727665 72064170 61636865
             0d6c6173 742d6d6f 64696669 65641d57 65642c20 3232204a 756c2032 30303920
             31393a31 353a3536 20474d54 04657461 67142233 34616133 38372d64 2d313536
             38656230 30220d61 63636570 742d7261 6e676573 05627974 65730e63 6f6e7465
             6e742d6c 656e6774 68023531 04766172 790f4163 63657074 2d456e63 6f64696e
             670c636f 6e74656e 742d7479 70650a74 6578742f 706c6169 6e003348 656c6c6f
             20576f72 6c642120 4d792063 6f6e7465 6e742069 6e636c75 64657320 61207472
             61696c69 6e672043 524c462e 0d0a0000""")
FIG13 = h("""0140c800 1d546869 7320636f 6e74656e 7420636f 6e746169 6e732043 524c462e
             0d0a0d07 74726169 6c657204 74657874""")
SAMPLE_HEADERS = (
    ("user-agent", "curl/7.16.3 libcurl/7.16.3 OpenSSL/0.9.7l zlib/1.2.3"),
    ("host", "www.example.com"),
    ("accept-language", "en, mi"),
)


def test_rfc9292_lengths_match_the_rfc() -> None:
    assert (len(FIG8), len(FIG9), len(FIG11), len(FIG13)) == (135, 144, 368, 48)


@pytest.mark.parametrize("data", [FIG8, FIG8[:-1], FIG8[:-2], FIG9, FIG9[:-12], FIG9[:-5]])
def test_rfc9292_request_examples_decode(data: bytes) -> None:
    req = bhttp.decode_request(data)
    assert (req.method, req.scheme, req.authority, req.path) == ("GET", "https", "", "/hello.txt")
    assert req.headers == SAMPLE_HEADERS
    assert req.content == b"" and req.trailers == ()


def test_rfc9292_known_length_request_encodes_to_figure_8() -> None:
    assert bhttp.encode_request(bhttp.Request("GET", "https", "", "/hello.txt", SAMPLE_HEADERS)) == FIG8


def test_rfc9292_response_with_interim_responses_decodes() -> None:
    resp = bhttp.decode_response(FIG11)
    assert resp.informational == (
        (102, (("running", '"sleep 15"'),)),
        (103, (("link", "</style.css>; rel=preload; as=style"), ("link", "</script.js>; rel=preload; as=script"))),
    )
    assert resp.status == 200
    assert resp.header("ETag") == '"34aa387-d-1568eb00"'
    assert resp.header("content-type") == "text/plain" and len(resp.headers) == 8
    assert resp.content == b"Hello World! My content includes a trailing CRLF.\r\n"
    assert resp.trailers == ()


def test_rfc9292_known_length_response_decodes_and_reencodes() -> None:
    resp = bhttp.decode_response(FIG13)
    assert resp.status == 200 and resp.headers == ()
    assert resp.content == b"This content contains CRLF.\r\n"
    assert resp.trailers == (("trailer", "text"),)
    assert bhttp.encode_response(resp) == FIG13


@pytest.mark.parametrize("bad", [
    b"",                                   # nothing
    h("01"),                               # a response where a request is expected
    FIG8[:20],                             # truncated inside the header section
    FIG8 + h("0001"),                      # non-zero padding
    FIG9[:-13],                            # indeterminate request cut inside the header section
    h("0003474554") + h("05") + b"https",  # truncated inside the control data
    h("00") + h("00") + h("00") + h("00") + h("00"),   # empty method
    h("0003474554056874747073000a2f68656c6c6f2e747874") + h("08") + h("073a6d6574686f6400"),  # ":method" as a field
])
def test_rfc9292_invalid_requests_rejected(bad: bytes) -> None:
    with pytest.raises(OhttpError) as exc:
        bhttp.decode_request(bad)
    assert exc.value.code == "bad_bhttp"


@pytest.mark.parametrize("bad", [FIG11[:40], FIG11 + b"\x01", h("014258"), h("0163"), h("01"), FIG8])
def test_rfc9292_invalid_responses_rejected(bad: bytes) -> None:
    with pytest.raises(OhttpError):
        bhttp.decode_response(bad)


def test_rfc9292_size_and_field_count_limits() -> None:
    with pytest.raises(OhttpError):
        bhttp.decode_request(FIG8, max_bytes=100)
    many = tuple((f"x-{i}", "v") for i in range(bhttp.MAX_FIELDS + 1))
    with pytest.raises(OhttpError):
        bhttp.decode_request(bhttp.encode_request(bhttp.Request("GET", "https", "", "/", many)))


@pytest.mark.parametrize("aead", [ohttp.AEAD_AES_128_GCM, ohttp.AEAD_AES_256_GCM, ohttp.AEAD_CHACHA20_POLY1305])
def test_every_supported_aead_round_trips(aead: int) -> None:
    key = ohttp.GatewayKey.generate(9, suites=((ohttp.KDF_HKDF_SHA256, aead),))
    enc, client = ohttp.encapsulate_request(key.config, b"request")
    assert enc[5:7] == aead.to_bytes(2, "big")
    plain, server = ohttp.decapsulate_request({9: key}, enc)
    assert plain == b"request"
    resp = ohttp.encapsulate_response(server, b"response")
    assert len(resp) == max(16 if aead == ohttp.AEAD_AES_128_GCM else 32, 12) + len(b"response") + 16
    assert ohttp.decapsulate_response(client, resp) == b"response"
