"""Property and table tests of the pure protocol core: canonical JSON, DSSE envelopes,
keys, pins, observation and identity parsing."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any, Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from notary.core import (
    ERROR_STATUSES,
    IDENTITY_TYPE,
    OBSERVATION_TYPE,
    Identity,
    Observation,
    ProbeResult,
    SigningKey,
    Target,
    VerifyKey,
    canonical_decode,
    canonical_encode,
    envelope_bytes,
    key_id_for,
    load_certificate,
    observed_spki,
    pae,
    pin_from_spki_hex,
    sign_envelope,
    sign_identity,
    sign_observation,
    spki_hex_from_pin,
    spki_sha256,
    verify_envelope,
    verify_identity,
    verify_observation,
)
from notary.core.canonical import MAX_SAFE_INT
from notary.core.envelope import MAX_ENVELOPE_BYTES, MAX_SIGNATURES
from notary.core.pins import summarize_leaf
from notary.errors import EncodingError, InputError, KeyFileError, VerificationError

VECTORS = Path(__file__).parent / "vectors"
_spec = importlib.util.spec_from_file_location("parallax_make_vectors_core", VECTORS / "make_vectors.py")
assert _spec and _spec.loader
mv = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mv)

KEY = SigningKey(bytes(range(32)))
OTHER = SigningKey(bytes(range(1, 33)))
LEAF_DER = (VECTORS / "leaf.der").read_bytes()
CA_DER = (VECTORS / "ca.der").read_bytes()
OK = mv.observation_ok()
TIMEOUT = mv.observation_timeout()
IDENT = mv.identity()
OK_ENV = envelope_bytes(sign_observation(OK, KEY))
TIMEOUT_ENV = envelope_bytes(sign_observation(TIMEOUT, KEY))

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ==================================================================================
# Canonical JSON
# ==================================================================================

safe_ints = st.integers(min_value=-MAX_SAFE_INT, max_value=MAX_SAFE_INT)
scalars = st.none() | st.booleans() | safe_ints | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=8), kids, max_size=5),
    max_leaves=25,
)


def same(a: Any, b: Any) -> bool:
    """Equality that also distinguishes bool from int (Python says True == 1)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


_ESC = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def reference_jcs(value: Any) -> str:
    """An independent RFC 8785 encoder for the integer-only subset (the spec, written out)."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return '"' + "".join(_ESC.get(c) or (f"\\u{ord(c):04x}" if ord(c) < 0x20 else c) for c in value) + '"'
    if isinstance(value, list):
        return "[" + ",".join(reference_jcs(v) for v in value) + "]"
    items = sorted(value.items(), key=lambda kv: kv[0].encode("utf-16-be"))  # UTF-16 code units
    return "{" + ",".join(reference_jcs(k) + ":" + reference_jcs(v) for k, v in items) + "}"


@FAST
@given(json_values)
def test_canonical_round_trip(value: Any) -> None:
    assert same(canonical_decode(canonical_encode(value)), value)


@FAST
@given(json_values)
def test_canonical_encode_is_idempotent(value: Any) -> None:
    once = canonical_encode(value)
    assert canonical_encode(canonical_decode(once)) == once


@FAST
@given(json_values)
@example({"\U0001f600": 1, "\ufb01": 2, "a": 3, "": 4, "\x7f": 5})  # UTF-16 order differs from code points
@example("\x00\x1f\x7f\u2028\"\\/")
def test_canonical_encode_matches_an_independent_rfc8785_encoder(value: Any) -> None:
    assert canonical_encode(value) == reference_jcs(value).encode("utf-8")


@FAST
@given(json_values)
@example({"\U0001f600": 1, "\ufb01": 2})  # astral key: the rfc8785 package path
@example({"\ufb01": ["\x00\u2028", -(2**53 - 1)], "a": {"": None}})  # BMP keys: the json fast path
def test_canonical_encode_equals_the_rfc8785_package(value: Any) -> None:
    """encode() takes a json.dumps fast path for BMP keys; it must equal the rfc8785 package byte for byte."""
    import rfc8785

    assert canonical_encode(value) == rfc8785.dumps(value)


@FAST
@given(json_values)
def test_decode_accepts_any_valid_spelling_and_canonicalises_it(value: Any) -> None:
    loose = json.dumps(value, indent=2, ensure_ascii=True)
    assert same(canonical_decode(loose), value)
    assert canonical_encode(canonical_decode(loose)) == canonical_encode(value)


def test_safe_integer_boundaries() -> None:
    assert canonical_encode([MAX_SAFE_INT, -MAX_SAFE_INT]) == b"[9007199254740991,-9007199254740991]"
    assert canonical_decode(b"[9007199254740991,-9007199254740991]") == [MAX_SAFE_INT, -MAX_SAFE_INT]


@FAST
@given(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([lambda f: f, lambda f: [1, f], lambda f: {"a": {"b": [f]}}]),
)
def test_floats_and_nan_are_refused_by_encode(f: float, wrap: Callable[[float], Any]) -> None:
    with pytest.raises(EncodingError):
        canonical_encode(wrap(f))


@FAST
@given(st.integers(min_value=MAX_SAFE_INT + 1) | st.integers(max_value=-MAX_SAFE_INT - 1))
@example(MAX_SAFE_INT + 1)
@example(-MAX_SAFE_INT - 1)
def test_unsafe_integers_are_refused(n: int) -> None:
    with pytest.raises(EncodingError):
        canonical_encode({"n": n})
    with pytest.raises(EncodingError):
        canonical_decode(('{"n":%d}' % n).encode())


@pytest.mark.parametrize("key", [1, None, True, 1.5, (1,), b"a"])
def test_non_string_keys_are_refused(key: Any) -> None:
    with pytest.raises(EncodingError):
        canonical_encode({key: 1})
    with pytest.raises(EncodingError):
        canonical_encode([{"ok": {key: 1}}])


@pytest.mark.parametrize(
    "text",
    [
        b"1.0", b"-0.0", b"1e3", b"1E-2", b"[0.5]", b'{"a":1.5}', b"1.",  # floats
        b"NaN", b"[NaN]", b"Infinity", b"-Infinity", b'{"a":-Infinity}',  # non-JSON constants
        b'{"a":1,"a":1}', b'{"a":1,"b":{"c":1,"c":2}}', b'[{"x":0,"x":0}]',  # duplicate keys
        b'"\\ud800"', b'"\\udfff"', b'{"\\ud83d":1}', b'"a\\udc00b"',  # lone surrogates
        b'"\xff"', b'"\xc3"', b"\xef\xbb\xbf{}",  # invalid UTF-8, BOM
        b"", b"{", b"[1,]", b"{'a':1}", b"01", b'{"a" 1}', b"[1] [2]", b'"\x01"',  # malformed
        b"9007199254740992", b"-9007199254740992", b"1" * 5000,  # unsafe integers
        b"[" * 40 + b"]" * 40, b"[" * 100000 + b"]" * 100000,  # too deep
    ],
)
def test_decode_refuses(text: bytes) -> None:
    with pytest.raises(EncodingError):
        canonical_decode(text)


def test_decode_refuses_a_str_holding_a_lone_surrogate() -> None:
    """A str (not bytes) with a lone surrogate cannot be UTF-8: an EncodingError, not a UnicodeEncodeError."""
    with pytest.raises(EncodingError, match="surrogate"):
        canonical_decode('"\udc80"')


@pytest.mark.parametrize(
    "value",
    ["\ud800", {"\udc00": 1}, [b"bytes"], {1, 2}, object(), [[[]]] * 1 + [json.loads("[" * 40 + "]" * 40)]],
)
def test_encode_refuses_other_values(value: Any) -> None:
    with pytest.raises(EncodingError):
        canonical_encode(value)


def _reference_decode(text: str) -> Any:
    """The strict decoder as first written: every hook, then the full walk of the value, always."""
    from notary.core import canonical

    def no_dup(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        if len({k for k, _ in pairs}) != len(pairs):
            raise EncodingError("duplicate key")
        return dict(pairs)

    def refuse(_: str) -> Any:
        raise EncodingError("refused")

    try:
        value = json.loads(text, object_pairs_hook=no_dup, parse_float=refuse, parse_constant=refuse)
    except EncodingError:
        raise
    except (ValueError, RecursionError) as exc:
        raise EncodingError(str(exc)) from None
    canonical._check(value)
    return value


_EDGE_TEXTS = [
    "[" * 32 + "]" * 32, "[" * 33 + "]" * 33, "[" * 31 + "{}" + "]" * 31, "[" * 32 + "{}" + "]" * 32,
    '{"a":' * 32 + "1" + "}" * 32, '{"a":' * 33 + "1" + "}" * 33,
    "999999999999999", "-999999999999999", "9007199254740991", "-9007199254740991", "9007199254740992",
    "10000000000000000", "-10000000000000000", "12345678901234567890", "-0", "[0,-0,1,-1]",
    '"\\ud83d\\ude00"', '"\\ud83d"', '"\\\\ud83d"', '{"\\u00e9":"\\/"}', '"a\\nb"', ' [1] ', '[1] ', ' 1', '\t"x"\n',
    "[1]x", "", "   ", '"unterminated', '{"a":1}{"b":2}',
]
_edge_texts = st.sampled_from(_EDGE_TEXTS)


@pytest.mark.parametrize("text", _EDGE_TEXTS)
def test_decode_edge_texts_as_the_full_walk(text: str) -> None:
    try:
        expected = _reference_decode(text)
    except EncodingError:
        with pytest.raises(EncodingError):
            canonical_decode(text.encode())
        return
    assert same(canonical_decode(text.encode()), expected)


@FAST
@given(json_values | _edge_texts, st.sampled_from(["compact", "escaped", "indented", "text"]))
def test_decode_takes_and_refuses_exactly_what_the_full_walk_does(value: Any, spelling: str) -> None:
    """canonical.decode skips the walk of the decoded value when the text holds no backslash and
    at most 32 brackets, and reads integers through a range-checked hook: it must accept and
    refuse exactly what decoding, then walking the whole value, accepts and refuses."""
    if spelling == "text" and isinstance(value, str):
        text = value
    elif spelling == "escaped":
        text = json.dumps(value, ensure_ascii=True)
    elif spelling == "indented":
        text = json.dumps(value, indent=1, ensure_ascii=False)
    else:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate in a str cannot even be UTF-8 bytes
        return
    try:
        expected = _reference_decode(text)
    except EncodingError:
        with pytest.raises(EncodingError):
            canonical_decode(data)
        return
    assert same(canonical_decode(data), expected)


def test_decode_size_limit() -> None:
    doc = b'"' + b"a" * 100 + b'"'
    assert canonical_decode(doc, max_bytes=len(doc)) == "a" * 100
    with pytest.raises(EncodingError):
        canonical_decode(doc, max_bytes=len(doc) - 1)


def test_canonical_examples() -> None:
    assert canonical_encode({"b": [True, None, -0], "a": "é\n"}) == b'{"a":"\xc3\xa9\\n","b":[true,null,0]}'
    assert canonical_decode(b' { "a" : -0 } ') == {"a": 0}


# ==================================================================================
# DSSE envelopes
# ==================================================================================


def flip(data: bytes, index: int, mask: int) -> bytes:
    return data[:index] + bytes([data[index] ^ mask]) + data[index + 1 :]


def assert_rejected(envb: bytes) -> None:
    with pytest.raises(VerificationError):
        verify_envelope(envb, KEY.verify_key, OBSERVATION_TYPE)
    with pytest.raises(VerificationError):
        verify_observation(envb, KEY.verify_key)


def test_envelopes_verify_before_mutation() -> None:
    assert verify_observation(OK_ENV, KEY.verify_key) == OK
    assert verify_observation(TIMEOUT_ENV, KEY.verify_key) == TIMEOUT


# With a single signature, no byte of the canonical envelope is unauthenticated:
# * payloadType and payload are covered by the signature (via PAE);
# * the keyid must name the trusted key exactly (lower-case hex, dict lookup);
# * the signature is 64 bytes, checked;
# * base64 is decoded strictly and must be canonical, so the 2 (payload: 2 or 4)
#   unused low bits of the last character before "=" cannot be flipped harmlessly;
# * any other byte is JSON structure or a member name: flipping it makes the JSON
#   invalid, invalid UTF-8, or renames/drops a required member.
# So EVERY single-byte change must be rejected.


@FAST
@given(st.data())
def test_any_single_byte_flip_of_an_envelope_is_rejected(data: st.DataObject) -> None:
    envb = data.draw(st.sampled_from([OK_ENV, TIMEOUT_ENV]))
    index = data.draw(st.integers(0, len(envb) - 1))
    mask = data.draw(st.integers(1, 255))
    assert_rejected(flip(envb, index, mask))


def test_every_single_bit_flip_of_the_small_envelope_is_rejected() -> None:
    for index in range(len(TIMEOUT_ENV)):
        for bit in range(8):
            mutated = flip(TIMEOUT_ENV, index, 1 << bit)
            with pytest.raises(VerificationError):
                verify_envelope(mutated, KEY.verify_key, OBSERVATION_TYPE)


def _envelope_with(payload: bytes, sig: bytes, ptype: str = OBSERVATION_TYPE) -> dict[str, Any]:
    return {
        "payloadType": ptype,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [{"keyid": KEY.key_id, "sig": base64.b64encode(sig).decode()}],
    }


def test_every_bit_flip_of_the_decoded_payload_or_signature_is_rejected() -> None:
    env = json.loads(TIMEOUT_ENV)
    payload = base64.b64decode(env["payload"])
    sig = base64.b64decode(env["signatures"][0]["sig"])
    verify_envelope(_envelope_with(payload, sig), KEY.verify_key, OBSERVATION_TYPE)  # control
    for index in range(len(payload)):
        for bit in range(8):
            with pytest.raises(VerificationError):
                verify_envelope(_envelope_with(flip(payload, index, 1 << bit), sig), KEY.verify_key, OBSERVATION_TYPE)
    for index in range(len(sig)):
        for bit in range(8):
            with pytest.raises(VerificationError):
                verify_envelope(_envelope_with(payload, flip(sig, index, 1 << bit)), KEY.verify_key, OBSERVATION_TYPE)


@FAST
@given(st.data())
def test_bit_flips_of_the_large_decoded_payload_are_rejected(data: st.DataObject) -> None:
    env = json.loads(OK_ENV)
    payload = base64.b64decode(env["payload"])
    sig = base64.b64decode(env["signatures"][0]["sig"])
    index = data.draw(st.integers(0, len(payload) - 1))
    mutated = _envelope_with(flip(payload, index, data.draw(st.integers(1, 255))), sig)
    assert_rejected(envelope_bytes(mutated))


def test_truncated_or_extended_payload_is_rejected() -> None:
    env = json.loads(OK_ENV)
    payload = base64.b64decode(env["payload"])
    sig = base64.b64decode(env["signatures"][0]["sig"])
    for p in (payload[:-1], payload + b" ", b" " + payload, payload[1:], b""):
        assert_rejected(envelope_bytes(_envelope_with(p, sig)))


# An extra signature whose keyid the verifier does not trust is never looked at:
# it is, by design, the one unauthenticated part of an envelope (DSSE allows
# several signers).  A flip anywhere INSIDE that entry object (its member names
# included: "keyid" -> "keyie" merely makes the entry unusable) changes nothing a
# verifier relies on, so the envelope still verifies exactly when the result is
# still valid strict JSON (a flip can create a quote, a control character, a bad
# escape or bad UTF-8, which the parser refuses).  A flip anywhere else must be
# rejected.  (This criterion was also checked exhaustively, every byte x every
# mask, while writing this test; the sampled version below keeps the suite fast.)

_UNUSED = {"keyid": "ed25519:" + "0" * 64, "sig": base64.b64encode(bytes(range(64))).decode()}
TWO_SIG_ENV = envelope_bytes(
    sign_observation(TIMEOUT, KEY) | {"signatures": [_UNUSED, sign_observation(TIMEOUT, KEY)["signatures"][0]]}
)


def _unused_spans() -> list[range]:
    """[the whole unused entry object, its keyid value, its sig value] as byte ranges."""
    entry = canonical_encode(_UNUSED)
    start = TWO_SIG_ENV.index(entry)
    spans = [range(start, start + len(entry))]
    for value in _UNUSED.values():
        s = TWO_SIG_ENV.index(b'"' + value.encode() + b'"') + 1
        spans.append(range(s, s + len(value)))
    return spans


def _check_two_sig_flip(index: int, mask: int) -> None:
    mutated = flip(TWO_SIG_ENV, index, mask)
    if index in _unused_spans()[0]:
        try:
            canonical_decode(mutated)
        except EncodingError:
            assert_rejected(mutated)
        else:
            verified = verify_envelope(mutated, KEY.verify_key, OBSERVATION_TYPE)
            assert verified.key_id == KEY.key_id
            assert verify_observation(mutated, KEY.verify_key) == TIMEOUT
    else:
        assert_rejected(mutated)


def test_two_signature_envelope_verifies() -> None:
    assert verify_observation(TWO_SIG_ENV, KEY.verify_key) == TIMEOUT


@FAST
@given(st.data())
def test_single_byte_flips_with_an_untrusted_extra_signature(data: st.DataObject) -> None:
    spans = _unused_spans()
    # Half the draws aim at the unused signature, so both branches are exercised.
    if data.draw(st.booleans()):
        span = data.draw(st.sampled_from(spans))
        index = data.draw(st.integers(span.start, span.stop - 1))
    else:
        index = data.draw(st.integers(0, len(TWO_SIG_ENV) - 1))
    _check_two_sig_flip(index, data.draw(st.integers(1, 255)))


def test_some_flips_in_the_unused_signature_are_harmless_and_some_are_not() -> None:
    entry, keyid_span, _ = _unused_spans()
    i = keyid_span.start + 10
    # '0' -> '1' inside the untrusted keyid: still valid JSON, still verifies.
    verify_envelope(flip(TWO_SIG_ENV, i, ord("0") ^ ord("1")), KEY.verify_key, OBSERVATION_TYPE)
    # '0' -> '"' breaks the JSON: rejected.
    assert_rejected(flip(TWO_SIG_ENV, i, ord("0") ^ ord('"')))
    # Renaming the untrusted entry's "keyid" member: the entry is skipped, still verifies.
    j = entry.start + 2  # {"keyid"  -> the 'k'
    assert TWO_SIG_ENV[j : j + 5] == b"keyid"
    verify_envelope(flip(TWO_SIG_ENV, j, ord("k") ^ ord("K")), KEY.verify_key, OBSERVATION_TYPE)
    # The same flip in the trusted entry's "keyid" is fatal.
    k = TWO_SIG_ENV.rindex(b'"keyid"') + 1
    assert k not in entry
    assert_rejected(flip(TWO_SIG_ENV, k, ord("k") ^ ord("K")))


def test_only_the_first_max_signatures_are_looked_at() -> None:
    real = sign_observation(TIMEOUT, KEY)
    decoys = [dict(_UNUSED) for _ in range(MAX_SIGNATURES)]
    assert verify_observation(real | {"signatures": decoys[:-1] + real["signatures"]}, KEY.verify_key) == TIMEOUT
    assert_rejected(envelope_bytes(real | {"signatures": decoys + real["signatures"]}))


def test_wrong_key_is_rejected() -> None:
    for env in (OK_ENV, TIMEOUT_ENV):
        with pytest.raises(VerificationError):
            verify_envelope(env, OTHER.verify_key, OBSERVATION_TYPE)
        with pytest.raises(VerificationError):
            verify_observation(env, OTHER.verify_key)
    # The right signature filed under the other key's id, with the other key trusted.
    env = json.loads(TIMEOUT_ENV)
    env["signatures"][0]["keyid"] = OTHER.key_id
    with pytest.raises(VerificationError):
        verify_envelope(env, OTHER.verify_key, OBSERVATION_TYPE)
    # A key map: the trusted set may hold several keys.
    keys = {OTHER.key_id: OTHER.verify_key, KEY.key_id: KEY.verify_key}
    assert verify_envelope(TIMEOUT_ENV, keys, OBSERVATION_TYPE).key_id == KEY.key_id
    with pytest.raises(VerificationError):
        verify_envelope(TIMEOUT_ENV, {OTHER.key_id: OTHER.verify_key}, OBSERVATION_TYPE)


def test_observation_signed_by_another_notary_is_rejected() -> None:
    # OTHER signs a payload that names KEY as its notary: the signature is fine for
    # OTHER, but the payload must name its signer.
    env = sign_envelope(OBSERVATION_TYPE, canonical_encode(TIMEOUT.to_payload()), OTHER)
    verify_envelope(env, OTHER.verify_key, OBSERVATION_TYPE)
    with pytest.raises(VerificationError, match="different notary"):
        verify_observation(env, OTHER.verify_key)
    with pytest.raises(ValueError):
        sign_observation(TIMEOUT, OTHER)


def test_wrong_payload_type_is_rejected() -> None:
    payload = canonical_encode(TIMEOUT.to_payload())
    # Signed as an identity document: an observation verifier refuses it.
    as_identity = sign_envelope(IDENTITY_TYPE, payload, KEY)
    with pytest.raises(VerificationError, match="payloadType"):
        verify_observation(as_identity, KEY.verify_key)
    # Relabelled after signing: the type is inside the PAE, so the signature fails.
    relabelled = dict(as_identity, payloadType=OBSERVATION_TYPE)
    with pytest.raises(VerificationError, match="signature"):
        verify_observation(relabelled, KEY.verify_key)
    # Type matching is exact: no case folding or parameter normalisation.
    for t in (OBSERVATION_TYPE.upper(), OBSERVATION_TYPE.replace("; ", ";"), OBSERVATION_TYPE + " "):
        with pytest.raises(VerificationError):
            verify_envelope(sign_envelope(t, payload, KEY), KEY.verify_key, OBSERVATION_TYPE)


def test_identity_vector_is_not_an_observation() -> None:
    env = sign_identity(IDENT, KEY)
    with pytest.raises(VerificationError):
        verify_observation(env, KEY.verify_key)
    with pytest.raises(VerificationError):
        verify_identity(OK_ENV, KEY.verify_key)


def test_noncanonical_but_validly_signed_payload_verifies() -> None:
    """Decision: verification is over the exact payload bytes, which need not be canonical.

    A notary always emits RFC 8785 bytes, but a verifier never re-serialises and
    never requires canonical form: a differently spelled payload that the key
    signed verifies and parses to the same observation.  (docs/protocol.md)
    """
    loose = json.dumps(TIMEOUT.to_payload(), indent=3).encode()
    env = sign_envelope(OBSERVATION_TYPE, loose, KEY)
    verified = verify_envelope(env, KEY.verify_key, OBSERVATION_TYPE)
    assert verified.payload_bytes == loose != canonical_encode(TIMEOUT.to_payload())
    assert verify_observation(env, KEY.verify_key) == TIMEOUT
    # ...but re-serialising it and keeping the old signature does not verify.
    env2 = dict(env, payload=base64.b64encode(canonical_encode(TIMEOUT.to_payload())).decode())
    with pytest.raises(VerificationError):
        verify_envelope(env2, KEY.verify_key, OBSERVATION_TYPE)


def test_signature_is_checked_before_the_payload_is_parsed() -> None:
    garbage = b'{"a":1,"a":2} not json \xff'
    unsigned = _envelope_with(garbage, bytes(64))
    with pytest.raises(VerificationError, match="no valid signature"):
        verify_envelope(unsigned, KEY.verify_key, OBSERVATION_TYPE)
    signed = sign_envelope(OBSERVATION_TYPE, garbage, KEY)
    with pytest.raises(VerificationError, match="not valid JSON"):
        verify_envelope(signed, KEY.verify_key, OBSERVATION_TYPE)
    with pytest.raises(VerificationError, match="not a JSON object"):
        verify_envelope(sign_envelope(OBSERVATION_TYPE, b"[1]", KEY), KEY.verify_key, OBSERVATION_TYPE)
    with pytest.raises(VerificationError, match="not valid JSON"):
        verify_envelope(sign_envelope(OBSERVATION_TYPE, b'{"x":1.5}', KEY), KEY.verify_key, OBSERVATION_TYPE)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda e: e.pop("payloadType"),
        lambda e: e.pop("payload"),
        lambda e: e.pop("signatures"),
        lambda e: e.update(signatures=[]),
        lambda e: e.update(signatures={}),
        lambda e: e.update(signatures=["x"]),
        lambda e: e.update(payload=1),
        lambda e: e.update(payloadType=None),
        lambda e: e.update(payload=e["payload"].rstrip("=")),  # padding is required
        lambda e: e.update(payload=e["payload"][:10] + "\n" + e["payload"][10:]),
        lambda e: e["signatures"][0].update(  # base64url is not base64
            sig=base64.urlsafe_b64encode(base64.b64decode(e["signatures"][0]["sig"])).decode()
        ),
        lambda e: e["signatures"][0].update(sig=e["signatures"][0]["sig"][:-4]),
        lambda e: e["signatures"][0].update(sig=None),
        lambda e: e["signatures"][0].update(keyid=KEY.key_id.upper()),
        lambda e: e["signatures"][0].pop("keyid"),
    ],
)
def test_malformed_envelopes_are_rejected(mutate: Callable[[dict[str, Any]], Any]) -> None:
    env = json.loads(OK_ENV)
    mutate(env)
    assert env != json.loads(OK_ENV), "mutation did nothing"
    assert_rejected(envelope_bytes(env))


@pytest.mark.parametrize("envb", [b"[]", b"null", b'"x"', b"{", b"", b"\xff", b'{"payloadType":1.0}'])
def test_non_envelopes_are_rejected(envb: bytes) -> None:
    assert_rejected(envb)


def test_oversized_envelope_is_rejected_unparsed() -> None:
    env = json.loads(TIMEOUT_ENV)
    env["padding"] = "x" * MAX_ENVELOPE_BYTES
    with pytest.raises(VerificationError, match="too large"):
        verify_envelope(envelope_bytes(env), KEY.verify_key, OBSERVATION_TYPE)
    # Unknown envelope members are otherwise ignored (they are not signed).
    env["padding"] = "x"
    assert verify_observation(envelope_bytes(env), KEY.verify_key) == TIMEOUT


def test_pae_definition() -> None:
    assert pae("t", b"") == b"DSSEv1 1 t 0 "
    assert pae("", b"x") == b"DSSEv1 0  1 x"
    assert pae("é", b"{}") == b"DSSEv1 2 \xc3\xa9 2 {}"  # lengths count bytes, not characters
    assert pae(OBSERVATION_TYPE, b"{}") == b"DSSEv1 52 " + OBSERVATION_TYPE.encode() + b" 2 {}"


def test_sign_envelope_shape() -> None:
    env = sign_envelope("t", b"{}", KEY)
    assert set(env) == {"payloadType", "payload", "signatures"}
    assert env["payload"] == "e30="
    sig = base64.b64decode(env["signatures"][0]["sig"])
    assert env["signatures"][0]["keyid"] == KEY.key_id
    assert KEY.verify_key.verify(b"DSSEv1 1 t 2 {}", sig)
    assert KEY.sign(b"DSSEv1 1 t 2 {}") == sig  # deterministic


# ==================================================================================
# Keys
# ==================================================================================


def test_signing_key_repr_never_shows_the_seed() -> None:
    seed = bytes(range(32))
    k = SigningKey(seed)
    secrets = [seed.hex(), seed.hex().upper(), base64.b64encode(seed).decode(), repr(seed), str(list(seed))]
    for text in (repr(k), str(k), f"{k}", f"{k!r}", "%s %r" % (k, k), repr([k]), repr({"k": k})):
        assert "secret hidden" in text and k.key_id in text
        for secret in secrets:
            assert secret not in text
    assert not hasattr(k, "__dict__")
    assert k.seed() == seed


def test_key_ids_and_public_key_encoding() -> None:
    raw = KEY.verify_key.raw
    assert KEY.key_id == key_id_for(raw) == "ed25519:" + hashlib.sha256(raw).hexdigest()
    assert VerifyKey.from_b64(KEY.verify_key.b64) == KEY.verify_key
    assert len(KEY.verify_key.b64) == 44 and KEY.verify_key.b64.endswith("=")
    assert repr(KEY.verify_key) == f"VerifyKey({KEY.key_id})"


@pytest.mark.parametrize(
    "text",
    [
        "", "AAAA", base64.b64encode(bytes(31)).decode(), base64.b64encode(bytes(33)).decode(),
        base64.b64encode(bytes(32)).decode().rstrip("="),  # unpadded
        base64.b64encode(bytes(32)).decode()[:-2] + "B=",  # non-zero padding bits
        base64.urlsafe_b64encode(b"\xff" * 32).decode(), " " + base64.b64encode(bytes(32)).decode(),
        "é" * 44, None, b"A" * 44,
    ],
)
def test_bad_public_keys_are_refused(text: Any) -> None:
    with pytest.raises(VerificationError):
        VerifyKey.from_b64(text)


@pytest.mark.parametrize("raw", [b"", bytes(31), bytes(33), "a" * 32, None])
def test_bad_key_material_is_refused(raw: Any) -> None:
    with pytest.raises(VerificationError):
        VerifyKey(raw)
    if isinstance(raw, bytes):
        with pytest.raises(KeyFileError):
            SigningKey(raw)


def test_verify_rejects_wrong_length_signatures() -> None:
    msg = b"m"
    sig = KEY.sign(msg)
    assert KEY.verify_key.verify(msg, sig)
    for bad in (sig[:-1], sig + b"\0", b"", bytes(64)):
        assert not KEY.verify_key.verify(msg, bad)


# ==================================================================================
# Pins and certificates
# ==================================================================================


@FAST
@given(st.binary(min_size=32, max_size=32))
def test_pin_round_trip(digest: bytes) -> None:
    pin = pin_from_spki_hex(digest.hex())
    assert pin == "sha256/" + base64.b64encode(digest).decode()
    assert spki_hex_from_pin(pin) == digest.hex()
    assert pin_from_spki_hex(spki_hex_from_pin(pin)) == pin
    assert observed_spki(pin) == digest.hex()


_GOOD = base64.b64encode(bytes(32)).decode()


@pytest.mark.parametrize(
    "pin",
    [
        "", "sha256/", "sha256", "sha1/" + _GOOD, "SHA256/" + _GOOD, "sha256:" + _GOOD, _GOOD,
        "sha256/" + base64.b64encode(bytes(31)).decode(),
        "sha256/" + base64.b64encode(bytes(33)).decode(),
        "sha256/" + _GOOD.rstrip("="),  # unpadded
        "sha256/" + _GOOD[:-2] + "B=",  # non-canonical: non-zero padding bits
        "sha256/" + _GOOD + " ", "sha256/ " + _GOOD, "sha256/" + _GOOD.replace("A", "é", 1),
        "sha256/" + base64.urlsafe_b64encode(b"\xfb" * 32).decode(),
        None, 42, b"sha256/" + _GOOD.encode(),
    ],
)
def test_bad_pins_are_rejected(pin: Any) -> None:
    with pytest.raises(InputError) as info:
        spki_hex_from_pin(pin)
    assert info.value.code == "bad_pin"


@pytest.mark.parametrize("spki", ["", "ab", "0" * 63, "0" * 65, "A" * 64, "g" * 64, " " + "0" * 63, None, 0])
def test_bad_spki_hex_is_rejected(spki: Any) -> None:
    with pytest.raises(InputError) as info:
        pin_from_spki_hex(spki)
    assert info.value.code == "bad_spki"


def _pem(der: bytes) -> str:
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM).decode()


LEAF_SPKI = mv.observation_ok().spki_sha256


@pytest.mark.parametrize(
    "observed",
    [
        pytest.param(LEAF_DER, id="der"),
        pytest.param(_pem(LEAF_DER), id="pem-str"),
        pytest.param(_pem(LEAF_DER).encode(), id="pem-bytes"),
        pytest.param("junk before\n" + _pem(LEAF_DER) + _pem(CA_DER), id="pem-bundle-first-wins"),
        pytest.param(pin_from_spki_hex(LEAF_SPKI), id="pin"),
    ],
)
def test_observed_spki_accepts_pem_der_and_pin(observed: Any) -> None:
    assert observed_spki(observed) == LEAF_SPKI


@pytest.mark.parametrize(
    "observed",
    [b"", b"\x30\x03\x02\x01\x01", LEAF_DER[:-1], LEAF_DER + b"\0", "not a certificate", "sha256/nope",
     "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", b"sha256/" + _GOOD.encode()],
)
def test_observed_spki_rejects_garbage(observed: Any) -> None:
    with pytest.raises(InputError):
        observed_spki(observed)


def test_load_certificate_returns_der() -> None:
    assert load_certificate(LEAF_DER) == LEAF_DER
    assert load_certificate(_pem(LEAF_DER)) == LEAF_DER


def _self_signed(key: Any, sign_hash: Any) -> bytes:
    import datetime as dt

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ed.example")])
    t = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(7).not_valid_before(t).not_valid_after(t + dt.timedelta(days=30))
        .sign(key, sign_hash)
    )
    return cert.public_bytes(serialization.Encoding.DER)


def test_spki_of_an_ed25519_certificate() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    der = _self_signed(key, None)
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert spki_sha256(der) == hashlib.sha256(spki).hexdigest()


def test_spki_of_a_certificate_with_an_unsupported_key_type() -> None:
    """Regression: cryptography cannot load a P-256 key relabelled with an unknown curve
    OID, which used to escape spki_sha256 as UnsupportedAlgorithm and crash a probe.
    The pin is the hash of the SPKI bytes exactly as they appear in the certificate."""
    p256, unknown = bytes.fromhex("06082a8648ce3d030107"), bytes.fromhex("06082a8648ce3d030109")
    assert LEAF_DER.count(p256) == 1
    odd = LEAF_DER.replace(p256, unknown)
    cert = x509.load_der_x509_certificate(odd)
    with pytest.raises(Exception):
        cert.public_key()
    # Independent extraction: the leaf's SPKI is the only 0x30 0x59 ... block with that OID.
    i = odd.index(unknown) - 13
    spki = odd[i : i + 91]
    assert spki[:2] == b"\x30\x59"
    assert spki_sha256(odd) == hashlib.sha256(spki).hexdigest()
    assert summarize_leaf(odd).sans == mv.LEAF_SUMMARY.sans
    probe = ProbeResult.success(Target("example.com", 443, "example.com"), "192.0.2.10", 1, "TLSv1.3", (odd,))
    assert probe.status == "ok" and probe.spki_sha256 == hashlib.sha256(spki).hexdigest()


# ==================================================================================
# Observation.from_payload
# ==================================================================================


def _without(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda d: d.pop(key)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(d: dict[str, Any]) -> None:
        *head, last = path.split(".")
        node: Any = d
        for p in head:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def _other_pin() -> str:
    return pin_from_spki_hex(mv.OLD_SPKI)


OK_FIELDS = sorted(OK.to_payload())

OK_MUTATIONS: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    *[(f"missing {k}", _without(k)) for k in OK_FIELDS],
    ("missing target.host", lambda d: d["target"].pop("host")),
    ("missing target.port", lambda d: d["target"].pop("port")),
    ("missing target.sni", lambda d: d["target"].pop("sni")),
    ("notary int", _set("notary", 1)),
    ("notary null", _set("notary", None)),
    ("target string", _set("target", "example.com:443")),
    ("target.host int", _set("target.host", 1)),
    ("target.port string", _set("target.port", "443")),
    ("target.port bool", _set("target.port", True)),
    ("target.port float", _set("target.port", 443.0)),
    ("target.sni int", _set("target.sni", 1)),
    ("ip int", _set("ip", 3221225994)),
    ("observed_at string", _set("observed_at", "1700000000")),
    ("observed_at bool", _set("observed_at", True)),
    ("observed_at null", _set("observed_at", None)),
    ("status int", _set("status", 0)),
    ("status unknown", _set("status", "weird")),
    ("status upper", _set("status", "OK")),
    ("status null", _set("status", None)),
    ("detail int", _set("detail", 1)),
    ("tls_version int", _set("tls_version", 13)),
    ("leaf_sha256 int", _set("leaf_sha256", 1)),
    ("leaf_sha256 mismatch", _set("leaf_sha256", hashlib.sha256(CA_DER).hexdigest())),
    ("leaf_sha256 upper", lambda d: d.update(leaf_sha256=d["leaf_sha256"].upper())),
    ("leaf_sha256 null", _set("leaf_sha256", None)),
    ("spki_sha256 null", _set("spki_sha256", None)),
    ("spki_sha256 and pin null", lambda d: d.update(spki_sha256=None, pin=None)),
    ("spki_sha256 not the leaf's", lambda d: d.update(spki_sha256=mv.OLD_SPKI, pin=_other_pin())),
    ("spki_sha256 of the CA", lambda d: d.update(spki_sha256=spki_sha256(CA_DER), pin=pin_from_spki_hex(spki_sha256(CA_DER)))),
    ("spki_sha256 upper", lambda d: d.update(spki_sha256=d["spki_sha256"].upper())),
    ("pin of another key", _set("pin", _other_pin())),
    ("pin null", _set("pin", None)),
    ("pin int", _set("pin", 1)),
    ("pin hex", lambda d: d.update(pin=d["spki_sha256"])),
    ("chain empty", _set("chain", [])),
    ("chain string", _set("chain", "MII=")),
    ("chain entry int", _set("chain.0", 1)),
    ("chain entry not base64", _set("chain.0", "not base64!")),
    ("chain entry base64url", lambda d: d["chain"].__setitem__(0, base64.urlsafe_b64encode(LEAF_DER).decode())),
    ("chain entry unpadded", lambda d: d["chain"].__setitem__(0, d["chain"][0].rstrip("=") + "A")),
    ("chain leaf swapped with CA", lambda d: d.update(chain=d["chain"][::-1])),
    ("chain leaf not a certificate", _set("chain.0", base64.b64encode(b"\x30\x00").decode())),
    ("chain too long", lambda d: d.update(chain=d["chain"] * 6)),
    ("leaf string", _set("leaf", "CN=example.com")),
    ("leaf missing sans", lambda d: d["leaf"].pop("sans")),
    ("leaf.sans string", _set("leaf.sans", "DNS:example.com")),
    ("leaf.not_after bool", _set("leaf.not_after", True)),
    ("leaf.subject null", _set("leaf.subject", None)),
    ("key_history object", _set("key_history", {})),
    ("key_history entry string", _set("key_history.0", "x")),
    ("key_history entry missing last_seen", lambda d: d["key_history"][0].pop("last_seen")),
    ("key_history first_seen bool", _set("key_history.0.first_seen", True)),
    ("key_history spki int", _set("key_history.0.spki_sha256", 5)),
]

TIMEOUT_MUTATIONS: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    *[(f"missing {k}", _without(k)) for k in sorted(TIMEOUT.to_payload())],
    ("error with a chain", lambda d: d.update(chain=[base64.b64encode(LEAF_DER).decode()])),
    ("error with a key and pin", lambda d: d.update(spki_sha256=LEAF_SPKI, pin=pin_from_spki_hex(LEAF_SPKI))),
    ("error with a pin only", lambda d: d.update(pin=pin_from_spki_hex(LEAF_SPKI))),
    ("error with a leaf hash", lambda d: d.update(leaf_sha256=hashlib.sha256(LEAF_DER).hexdigest())),
    ("error with a leaf summary", lambda d: d.update(leaf=mv.LEAF_SUMMARY.to_json())),
    ("error status relabelled ok", _set("status", "ok")),
    ("target.sni missing", lambda d: d["target"].pop("sni")),
]


def _assert_malformed(base: Observation, mutate: Callable[[dict[str, Any]], None]) -> None:
    payload = json.loads(json.dumps(base.to_payload()))
    before = json.dumps(payload, sort_keys=True)
    mutate(payload)
    assert json.dumps(payload, sort_keys=True) != before, "mutation did nothing"
    with pytest.raises(VerificationError, match="malformed observation"):
        Observation.from_payload(payload)
    # And end to end: a validly signed envelope with that payload is still refused.
    try:
        body = canonical_encode(payload)
    except EncodingError:  # e.g. a float: it cannot even be signed as canonical JSON
        body = json.dumps(payload).encode()
    env = sign_envelope(OBSERVATION_TYPE, body, KEY)
    with pytest.raises(VerificationError):
        verify_observation(env, KEY.verify_key)


@pytest.mark.parametrize("mutate", [m for _, m in OK_MUTATIONS], ids=[n for n, _ in OK_MUTATIONS])
def test_from_payload_rejects_malformed_ok_observations(mutate: Callable[[dict[str, Any]], None]) -> None:
    _assert_malformed(OK, mutate)


@pytest.mark.parametrize("mutate", [m for _, m in TIMEOUT_MUTATIONS], ids=[n for n, _ in TIMEOUT_MUTATIONS])
def test_from_payload_rejects_malformed_error_observations(mutate: Callable[[dict[str, Any]], None]) -> None:
    _assert_malformed(TIMEOUT, mutate)


@pytest.mark.parametrize("payload", [None, [], "x", 1, {}])
def test_from_payload_rejects_non_objects(payload: Any) -> None:
    with pytest.raises(VerificationError):
        Observation.from_payload(payload)


def test_from_payload_round_trips_and_ignores_unknown_members() -> None:
    for obs in (OK, TIMEOUT):
        assert Observation.from_payload(obs.to_payload()) == obs
        assert Observation.from_payload(obs.to_payload() | {"future_field": [1, "x"]}) == obs
    # A leaf summary is optional even for ok, and nullable fields may be null.
    d = OK.to_payload() | {"leaf": None, "detail": None, "ip": None, "tls_version": None}
    parsed = Observation.from_payload(d)
    assert parsed.leaf is None and parsed.ip is None


@pytest.mark.parametrize("status", sorted(ERROR_STATUSES))
def test_every_error_status_parses(status: str) -> None:
    d = TIMEOUT.to_payload() | {"status": status}
    assert Observation.from_payload(d).status == status


def test_from_probe_truncates_history_and_signs_no_request_fields() -> None:
    probe = ProbeResult.success(Target("example.com", 443, "example.com"), "192.0.2.10", 100, "TLSv1.3", (LEAF_DER,))
    obs = Observation.from_probe(
        probe, notary=KEY.key_id, key_history=tuple(mv.KeySighting(mv.OLD_SPKI, i, i) for i in range(40)),
    )
    assert len(obs.key_history) == 32
    # Protocol 2: what one request adds (nonce, signing time, source, age) is not in the observation.
    assert not {"nonce", "signed_at", "source", "age"} & set(obs.to_payload())
    assert verify_observation(sign_observation(obs, KEY), KEY.verify_key) == obs


# ==================================================================================
# Identity
# ==================================================================================


def test_identity_round_trip() -> None:
    env = sign_identity(IDENT, KEY)
    assert verify_identity(env, KEY.verify_key) == IDENT
    bare = Identity(name="n", region="r", key_id=KEY.key_id, public_key=KEY.verify_key.b64, software="s", signed_at=1)
    assert verify_identity(sign_identity(bare, KEY), KEY.verify_key) == bare
    assert bare.to_payload()["coordinates"] is None


def test_identity_mismatch_is_rejected() -> None:
    # A document naming OTHER, validly signed by KEY.
    for changes in (
        {"key_id": OTHER.key_id, "public_key": OTHER.verify_key.b64},
        {"key_id": OTHER.key_id},
        {"public_key": OTHER.verify_key.b64},
    ):
        payload = IDENT.to_payload() | changes
        env = sign_envelope(IDENTITY_TYPE, canonical_encode(payload), KEY)
        with pytest.raises(VerificationError, match="different key"):
            verify_identity(env, KEY.verify_key)
        with pytest.raises(VerificationError):
            verify_identity(env, OTHER.verify_key)  # and OTHER did not sign it
    # The genuine document checked against the wrong expected key.
    with pytest.raises(VerificationError):
        verify_identity(sign_identity(IDENT, KEY), OTHER.verify_key)
    with pytest.raises(ValueError):
        sign_identity(IDENT, OTHER)


@pytest.mark.parametrize(
    "mutate",
    [
        _without("name"), _without("limits"), _without("signed_at"), _without("key_id"), _without("protocol"),
        _set("name", 1), _set("signed_at", True), _set("signed_at", "1700000000"), _set("signed_at", None),
        _set("limits", []), _set("limits", {"max_targets": True}), _set("limits", {"max_targets": "16"}),
        _set("url", 1), _set("country", ["CH"]), _set("rir", False),
        _set("coordinates", "47,8"), _set("coordinates", [1, 2]),
        _set("coordinates", {"lat_e6": "47376887", "lon_e6": 8541694}),
        _set("coordinates", {"lat_e6": 47376887}), _set("coordinates", {"lat_e6": True, "lon_e6": 1}),
        _set("coordinates", {"lat_e6": 47.3, "lon_e6": 8.5}),
    ],
)
def test_identity_from_payload_rejects_malformed(mutate: Callable[[dict[str, Any]], None]) -> None:
    payload = json.loads(json.dumps(IDENT.to_payload()))
    mutate(payload)
    with pytest.raises(VerificationError, match="malformed identity"):
        Identity.from_payload(payload)


def test_target_parse_memo_never_confuses_a_bool_with_a_port() -> None:
    """Target.parse is memoised for plain (str, int, str|None); True == 1 must still be refused."""
    assert Target.parse("memo.example", 1).port == 1
    with pytest.raises(InputError):
        Target.parse("memo.example", True)
    assert Target.parse("MEMO.example.", 443) == Target.parse("memo.example", 443)
    with pytest.raises(InputError):
        Target.parse("bad..host", 443)
    with pytest.raises(InputError):
        Target.parse("bad..host", 443)  # errors are not cached into successes
