"""A corpus of tampered notary answers: every one rejected by client.verify.check_answer, none counted.

Envelopes are really signed (notary.core.sign_observation / sign_envelope with Ed25519
keys) over observations of a real trustme certificate, and each answer carries a real
freshness proof (protocol 2: a statement signed over the Merkle root of a batch of four
leaves, this answer's leaf at index 2); each case then breaks one thing.
"""

from __future__ import annotations

import base64
import copy
import hashlib
from typing import Any, Callable

import pytest
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from client.bundle import BundleEntry
from client.policy import PRESETS
from client.verdict import ClientView, Evidence, decide
from client.verify import MAX_ENVELOPES, check_answer, check_identity
from notary.core import (
    FRESHNESS_TYPE,
    IDENTITY_TYPE,
    OBSERVATION_TYPE,
    Identity,
    Observation,
    ProbeResult,
    SigningKey,
    Target,
    canonical_encode,
    leaf_bytes,
    observation_digest,
    sign_envelope,
    sign_identity,
    sign_observation,
    spki_sha256,
    stamp_batch,
)
from notary.core import merkle

NOW = 1_700_000_000
HOST, PORT = "example.com", 443
NONCE = "fresh-nonce-for-this-call-0001"
POLICY = PRESETS["mpic"]


@pytest.fixture(scope="module")
def leaf_der() -> bytes:
    cert = trustme.CA().issue_cert(HOST)
    return x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes()).public_bytes(Encoding.DER)


@pytest.fixture(scope="module")
def keys() -> list[SigningKey]:
    return [SigningKey.generate() for _ in range(4)]


_KEYS: dict[str, SigningKey] = {}


def entry_for(key: SigningKey, i: int, region: str = "eu") -> BundleEntry:
    _KEYS[key.key_id] = key
    return BundleEntry(f"notary-{i}", f"http://127.0.0.1:{9100 + i}", region, key.key_id, key.verify_key.b64)


_DEFAULT_SNI: Any = object()


def make_obs(key: SigningKey, der: bytes, *, host: str = HOST, port: int = PORT,
             observed_at: int = NOW - 10, notary: str | None = None, sni: Any = _DEFAULT_SNI) -> Observation:
    target = Target(host, port, host if sni is _DEFAULT_SNI else sni)
    probe = ProbeResult.success(target, "192.0.2.1", observed_at, "TLSv1.3", (der,))
    assert probe.status == "ok"
    obs = Observation.from_probe(probe, notary=key.key_id)
    if notary is not None:
        obs = Observation(**{**{f: getattr(obs, f) for f in obs.__slots__}, "notary": notary})
    return obs


def signed(key: SigningKey, der: bytes, **kw: Any) -> dict[str, Any]:
    return sign_observation(make_obs(key, der, **kw), key)


def raw_signed(key: SigningKey, payload: Any, ptype: str = OBSERVATION_TYPE) -> dict[str, Any]:
    """Sign arbitrary payload JSON with ``key`` (what a buggy or malicious notary could do)."""
    return sign_envelope(ptype, canonical_encode(payload), key)


def identity(key: SigningKey, name: str, region: str, *, signer: SigningKey | None = None,
             key_id: str | None = None) -> dict[str, Any]:
    ident = Identity(name=name, region=region, key_id=key_id or key.key_id, public_key=key.verify_key.b64,
                     software="parallax-test", signed_at=NOW)
    if signer is None and key_id is None:
        return sign_identity(ident, key)
    return sign_envelope(IDENTITY_TYPE, canonical_encode(ident.to_payload()), signer or key)


def flip_b64(text: str, at: int = 5) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[at % len(raw)] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def _digest(env: Any) -> str:
    try:
        return observation_digest(base64.b64decode(env["payload"]))
    except Exception:  # junk envelopes: the leaf names some digest; the signature check fails first anyway
        return "00" * 32


def stamp(envelopes: Any, key: SigningKey, *, nonce: str = NONCE, signed_at: int = NOW, source: str = "fresh",
          digests: list[str] | None = None, leaf: bytes | None = None) -> dict[str, Any]:
    """An honest freshness proof for ``envelopes``: this leaf at index 2 of a batch of four."""
    if digests is None:
        digests = [_digest(e) for e in envelopes] if isinstance(envelopes, list) and envelopes else ["00" * 32]
    mine = leaf if leaf is not None else leaf_bytes(nonce, digests, source)
    others = [leaf_bytes(f"another-clients-nonce-{i:04d}", ["11" * 32], "cached") for i in range(3)]
    return stamp_batch(key, signed_at, others[:2] + [mine] + others[2:])[2]


def check(entry: BundleEntry, envelopes: Any, *, nonce: str = NONCE, host: str = HOST, port: int = PORT,
          now: int = NOW, ident: Any = None, freshness: Any = ..., stamp_kw: dict[str, Any] | None = None,
          **sni: Any) -> Evidence:
    """check_answer as the client calls it, with by default an honest freshness proof by the entry's key
    (``stamp_kw`` tunes it); ``sni=...`` passes an SNI, left out it is the host's default."""
    if freshness is ...:
        freshness = stamp(envelopes, _KEYS[entry.key_id], **(stamp_kw or {}))
    return check_answer(entry, envelopes, freshness=freshness, nonce=nonce, host=host, port=port, now=now,
                        policy=POLICY, identity=ident, **sni)


def counted_with(bad: Evidence, good: list[Evidence], client_spki: str) -> tuple[int, str, bool]:
    """decide() over two valid agreeing answers plus ``bad``: (agreeing, bad's result, bad counted)."""
    v = decide(ClientView("ok", client_spki), good + [bad], POLICY, NOW, host=HOST, port=PORT)
    r = v.results[-1]
    return v.agreeing, r.result, r.counted


# -- the baseline: a correct answer is accepted and counted ---------------------------------------

def test_valid_answer_is_accepted_and_counted(keys, leaf_der) -> None:
    e = entry_for(keys[0], 0)
    ev = check(e, [signed(keys[0], leaf_der)], ident=identity(keys[0], e.name, e.region))
    assert ev.failure is None and len(ev.observations) == 1
    assert ev.observations[0].spki_sha256 == spki_sha256(leaf_der)
    good = [check(entry_for(k, i), [signed(k, leaf_der)]) for i, k in enumerate(keys[1:3], 1)]
    assert counted_with(ev, good, spki_sha256(leaf_der)) == (3, "agrees", True)


def test_exactly_max_envelopes_is_accepted(keys, leaf_der) -> None:
    e = entry_for(keys[0], 0)
    ev = check(e, [signed(keys[0], leaf_der)] * MAX_ENVELOPES)
    assert ev.failure is None and len(ev.observations) == MAX_ENVELOPES


def test_edges_of_freshness_are_accepted(keys, leaf_der) -> None:
    e = entry_for(keys[0], 0)
    at_skew = signed(keys[0], leaf_der, observed_at=NOW)
    assert check(e, [at_skew], stamp_kw={"signed_at": NOW + POLICY.max_skew}).failure is None
    at_age = signed(keys[0], leaf_der, observed_at=NOW - POLICY.max_age)
    assert check(e, [at_age]).failure is None


# -- the corpus -----------------------------------------------------------------------------------

Case = Callable[[list[SigningKey], bytes], tuple[Any, dict[str, Any]]]


def _flip_payload(keys, der):
    env = signed(keys[0], der)
    env["payload"] = flip_b64(env["payload"], 40)
    return [env], {}


def _flip_payload_last(keys, der):
    env = signed(keys[0], der)
    env["payload"] = flip_b64(env["payload"], -2)
    return [env], {}


def _flip_signature(keys, der):
    env = signed(keys[0], der)
    env["signatures"][0]["sig"] = flip_b64(env["signatures"][0]["sig"], 10)
    return [env], {}


def _flip_payload_type(keys, der):
    env = signed(keys[0], der)
    env["payloadType"] = env["payloadType"].replace("observation", "observatiom")
    return [env], {}


def _wrong_key(keys, der):
    return [signed(keys[1], der)], {}  # a valid observation by another notary


def _keyid_relabelled(keys, der):
    env = signed(keys[1], der)
    env["signatures"][0]["keyid"] = keys[0].key_id  # claims to be ours; the signature is not
    return [env], {}


def _copied_envelope(keys, der):
    # Notary 1's genuine envelope for this very request, copied into notary 0's answer.
    return [signed(keys[0], der), signed(keys[1], der)], {}


def _wrong_payload_type_signed(keys, der):
    # A correctly signed envelope, but of another type (an identity-typed observation).
    return [raw_signed(keys[0], make_obs(keys[0], der).to_payload(), IDENTITY_TYPE)], {}


def _no_signatures(keys, der):
    env = signed(keys[0], der)
    env["signatures"] = []
    return [env], {}


def _replayed_nonce(keys, der):
    return [signed(keys[0], der)], {"stamp_kw": {"nonce": "an-earlier-calls-nonce-0001"}}


def _stale_observed_at(keys, der):
    return [signed(keys[0], der, observed_at=NOW - POLICY.max_age - 1)], {}


def _signed_in_future(keys, der):
    return [signed(keys[0], der, observed_at=NOW)], {"stamp_kw": {"signed_at": NOW + POLICY.max_skew + 1}}


def _signed_in_past(keys, der):
    return [signed(keys[0], der, observed_at=NOW - POLICY.max_skew - 1)], {"stamp_kw": {"signed_at": NOW - POLICY.max_skew - 1}}


def _observed_after_signed(keys, der):
    return [signed(keys[0], der, observed_at=NOW)], {"stamp_kw": {"signed_at": NOW - 1}}


# -- freshness proof (protocol 2) cases ---------------------------------------------------------

def _fresh(keys, der, **kw):
    envs = [signed(keys[0], der)]
    return envs, stamp(envs, keys[0], **kw)


def _path_hash_flipped(keys, der):
    envs, f = _fresh(keys, der)
    f["path"][0] = ("1" if f["path"][0][0] == "0" else "0") + f["path"][0][1:]
    return envs, {"freshness": f}


def _path_reordered(keys, der):
    envs, f = _fresh(keys, der)
    f["path"].reverse()
    return envs, {"freshness": f}


def _path_truncated(keys, der):
    envs, f = _fresh(keys, der)
    f["path"].pop()
    return envs, {"freshness": f}


def _path_extended(keys, der):
    envs, f = _fresh(keys, der)
    f["path"].append("22" * 32)
    return envs, {"freshness": f}


def _wrong_index(keys, der):
    envs, f = _fresh(keys, der)
    f["index"] = 3
    return envs, {"freshness": f}


def _index_beyond_tree(keys, der):
    envs, f = _fresh(keys, der)
    f["index"] = 4
    return envs, {"freshness": f}


def _index_is_a_bool(keys, der):
    envs, f = _fresh(keys, der)
    f["index"] = True
    return envs, {"freshness": f}


def _leaf_tampered_nonce(keys, der):
    # The leaf rewritten to name this call's nonce, the path and signature left: not under the root.
    envs, f = _fresh(keys, der, nonce="an-earlier-calls-nonce-0001")
    f["leaf"] = base64.b64encode(leaf_bytes(NONCE, [_digest(envs[0])], "fresh")).decode()
    return envs, {"freshness": f}


def _leaf_wrong_digest(keys, der):
    # Honestly stamped, but the leaf names an observation other than the one sent.
    envs = [signed(keys[0], der)]
    other = signed(keys[0], der, observed_at=NOW - 20)
    return envs, {"freshness": stamp(envs, keys[0], digests=[_digest(other)])}


def _leaf_names_envelope_bytes_not_payload(keys, der):
    envs = [signed(keys[0], der)]
    wrong = hashlib.sha256(canonical_encode(envs[0])).hexdigest()
    return envs, {"freshness": stamp(envs, keys[0], digests=[wrong])}


def _leaf_names_fewer(keys, der):
    envs = [signed(keys[0], der), signed(keys[0], der, observed_at=NOW - 20)]
    return envs, {"freshness": stamp(envs, keys[0], digests=[_digest(envs[0])])}


def _envelopes_reordered(keys, der):
    envs = [signed(keys[0], der), signed(keys[0], der, observed_at=NOW - 20)]
    f = stamp(envs, keys[0])
    return envs[::-1], {"freshness": f}


def _statement_other_key(keys, der):
    envs = [signed(keys[0], der)]
    return envs, {"freshness": stamp(envs, keys[1])}


def _statement_keyid_relabelled(keys, der):
    envs = [signed(keys[0], der)]
    f = stamp(envs, keys[1])
    f["statement"]["signatures"][0]["keyid"] = keys[0].key_id
    return envs, {"freshness": f}


def _statement_sig_flipped(keys, der):
    envs, f = _fresh(keys, der)
    f["statement"]["signatures"][0]["sig"] = flip_b64(f["statement"]["signatures"][0]["sig"], 3)
    return envs, {"freshness": f}


def _statement_root_flipped(keys, der):
    envs, f = _fresh(keys, der)
    f["statement"]["payload"] = flip_b64(f["statement"]["payload"], 60)
    return envs, {"freshness": f}


def _statement_is_an_observation(keys, der):
    envs, f = _fresh(keys, der)
    f["statement"] = envs[0]  # a valid envelope by the right key, of the wrong type
    return envs, {"freshness": f}


def _statement_type_relabelled(keys, der):
    envs, f = _fresh(keys, der)
    f["statement"]["payloadType"] = OBSERVATION_TYPE
    return envs, {"freshness": f}


def _statement_names_other_notary(keys, der):
    envs, f = _fresh(keys, der)
    payload = base64.b64decode(f["statement"]["payload"])
    st_obj = __import__("json").loads(payload)
    st_obj["notary"] = keys[1].key_id
    f["statement"] = raw_signed(keys[0], st_obj, FRESHNESS_TYPE)
    return envs, {"freshness": f}


def _statement_signed_at_bool(keys, der):
    envs, f = _fresh(keys, der)
    st_obj = __import__("json").loads(base64.b64decode(f["statement"]["payload"]))
    st_obj["signed_at"] = True
    f["statement"] = raw_signed(keys[0], st_obj, FRESHNESS_TYPE)
    return envs, {"freshness": f}


def _statement_bigger_tree(keys, der):
    # Same root, a larger claimed size: the path no longer fits the tree.
    envs, f = _fresh(keys, der)
    st_obj = __import__("json").loads(base64.b64decode(f["statement"]["payload"]))
    st_obj["tree_size"] = 9
    f["statement"] = raw_signed(keys[0], st_obj, FRESHNESS_TYPE)
    return envs, {"freshness": f}


def _inner_node_as_leaf(keys, der):
    # Second-preimage attempt: present an inner node's children as a leaf of a one-leaf tree.
    # RFC 6962 domain separation (0x00 leaf / 0x01 node) makes the root differ.
    envs = [signed(keys[0], der)]
    a = merkle.leaf_hash(leaf_bytes(NONCE, [_digest(envs[0])], "fresh"))
    b = merkle.leaf_hash(b"other")
    st_env = raw_signed(keys[0], {"notary": keys[0].key_id, "signed_at": NOW, "tree_size": 1,
                                  "root": merkle.node_hash(a, b).hex()}, FRESHNESS_TYPE)
    return envs, {"freshness": {"statement": st_env, "leaf": base64.b64encode(a + b).decode(), "index": 0, "path": []}}


def _leaf_extra_member(keys, der):
    envs = [signed(keys[0], der)]
    leaf = canonical_encode({"nonce": NONCE, "observations": [_digest(envs[0])], "source": "fresh", "x": 1})
    return envs, {"freshness": stamp(envs, keys[0], leaf=leaf)}


def _leaf_no_observations(keys, der):
    envs = [signed(keys[0], der)]
    leaf = canonical_encode({"nonce": NONCE, "observations": [], "source": "fresh"})
    return envs, {"freshness": stamp(envs, keys[0], leaf=leaf)}


def _leaf_unknown_source(keys, der):
    envs = [signed(keys[0], der)]
    leaf = canonical_encode({"nonce": NONCE, "observations": [_digest(envs[0])], "source": "invented"})
    return envs, {"freshness": stamp(envs, keys[0], leaf=leaf)}


def _leaf_not_canonical_b64(keys, der):
    envs, f = _fresh(keys, der)
    f["leaf"] = f["leaf"].rstrip("=") + "\n"
    return envs, {"freshness": f}


def _answer_of_another_request(keys, der):
    # A complete, genuine answer for an earlier request of this client, replayed.
    envs = [signed(keys[0], der)]
    return envs, {"freshness": stamp(envs, keys[0], nonce="an-earlier-calls-nonce-0001")}


def _freshness_junk(value: Any) -> Case:
    return lambda keys, der: ([signed(keys[0], der)], {"freshness": value})


def _wrong_host(keys, der):
    return [signed(keys[0], der, host="evil.example")], {}


def _wrong_port(keys, der):
    return [signed(keys[0], der, port=8443)], {}


def _wrong_sni(keys, der):
    # A genuine observation of the right host:port, but of another virtual host (SNI).
    return [signed(keys[0], der, sni="other.example")], {}


def _wrong_sni_explicit(keys, der):
    return [signed(keys[0], der, sni="other.example")], {"sni": HOST}


def _no_sni_sent(keys, der):
    return [signed(keys[0], der, sni=None)], {}


def _sni_sent_when_none_asked(keys, der):
    return [signed(keys[0], der)], {"sni": None}


def _default_sni_when_another_asked(keys, der):
    # The client asked for SNI cdn.example on example.com; the notary probed with the default.
    return [signed(keys[0], der)], {"sni": "cdn.example"}


def _good_then_wrong_sni(keys, der):
    return [signed(keys[0], der), signed(keys[0], der, sni="other.example")], {}


def _names_other_notary(keys, der):
    obs = make_obs(keys[0], der, notary=keys[1].key_id)
    return [raw_signed(keys[0], obs.to_payload())], {}


def _good_then_bad(keys, der):
    return [signed(keys[0], der), signed(keys[0], der, port=8443)], {}


def _malformed(mutate: Callable[[dict[str, Any]], None]) -> Case:
    def case(keys, der):
        payload = make_obs(keys[0], der).to_payload()
        mutate(payload)
        return [raw_signed(keys[0], payload)], {}
    return case


def _set(k: str, v: Any) -> Callable[[dict[str, Any]], None]:
    return lambda p: p.__setitem__(k, v)


def _identity_name(keys, der):
    return [signed(keys[0], der)], {"ident": identity(keys[0], "someone-else", "eu")}


def _identity_region(keys, der):
    return [signed(keys[0], der)], {"ident": identity(keys[0], "notary-0", "us")}


def _identity_other_signer(keys, der):
    return [signed(keys[0], der)], {"ident": identity(keys[1], "notary-0", "eu")}


def _identity_names_other_key(keys, der):
    return [signed(keys[0], der)], {"ident": identity(keys[0], "notary-0", "eu", key_id=keys[1].key_id)}


def _identity_junk(keys, der):
    return [signed(keys[0], der)], {"ident": {"payloadType": IDENTITY_TYPE, "payload": "e30=", "signatures": 7}}


def _identity_not_a_dict(keys, der):
    return [signed(keys[0], der)], {"ident": ["not", "an", "envelope"]}


def _empty(keys, der):
    return [], {}


def _too_many(keys, der):
    return [signed(keys[0], der)] * (MAX_ENVELOPES + 1), {}


def _junk(value: Any) -> Case:
    return lambda keys, der: (value, {})


CORPUS: dict[str, tuple[Case, str]] = {
    "flipped payload byte": (_flip_payload, "bad_signature"),
    "flipped last payload byte": (_flip_payload_last, "bad_signature"),
    "flipped signature byte": (_flip_signature, "bad_signature"),
    "flipped payloadType": (_flip_payload_type, "bad_signature"),
    "signed by another notary": (_wrong_key, "bad_signature"),
    "keyid relabelled": (_keyid_relabelled, "bad_signature"),
    "another notary's envelope copied in": (_copied_envelope, "bad_signature"),
    "wrong payloadType, validly signed": (_wrong_payload_type_signed, "bad_signature"),
    "no signatures": (_no_signatures, "bad_signature"),
    "replayed nonce": (_replayed_nonce, "invalid"),
    "freshness: a path hash flipped": (_path_hash_flipped, "bad_signature"),
    "freshness: path reordered": (_path_reordered, "bad_signature"),
    "freshness: path truncated": (_path_truncated, "bad_signature"),
    "freshness: path extended": (_path_extended, "bad_signature"),
    "freshness: wrong index": (_wrong_index, "bad_signature"),
    "freshness: index beyond the tree": (_index_beyond_tree, "bad_signature"),
    "freshness: index is a bool": (_index_is_a_bool, "bad_signature"),
    "freshness: leaf rewritten to this nonce": (_leaf_tampered_nonce, "bad_signature"),
    "freshness: leaf names another observation": (_leaf_wrong_digest, "invalid"),
    "freshness: digest over the envelope, not the payload": (_leaf_names_envelope_bytes_not_payload, "invalid"),
    "freshness: leaf names fewer observations": (_leaf_names_fewer, "invalid"),
    "freshness: envelopes reordered": (_envelopes_reordered, "invalid"),
    "freshness: statement by another notary's key": (_statement_other_key, "bad_signature"),
    "freshness: statement keyid relabelled": (_statement_keyid_relabelled, "bad_signature"),
    "freshness: statement signature flipped": (_statement_sig_flipped, "bad_signature"),
    "freshness: statement payload flipped": (_statement_root_flipped, "bad_signature"),
    "freshness: an observation as the statement": (_statement_is_an_observation, "bad_signature"),
    "freshness: statement type relabelled": (_statement_type_relabelled, "bad_signature"),
    "freshness: statement names another notary": (_statement_names_other_notary, "invalid"),
    "freshness: statement signed_at is a bool": (_statement_signed_at_bool, "invalid"),
    "freshness: statement claims a bigger tree": (_statement_bigger_tree, "bad_signature"),
    "freshness: inner node passed as a leaf": (_inner_node_as_leaf, "bad_signature"),
    "freshness: leaf with an extra member": (_leaf_extra_member, "invalid"),
    "freshness: leaf names no observation": (_leaf_no_observations, "invalid"),
    "freshness: leaf with an unknown source": (_leaf_unknown_source, "invalid"),
    "freshness: leaf not canonical base64": (_leaf_not_canonical_b64, "bad_signature"),
    "freshness: a whole earlier answer replayed": (_answer_of_another_request, "invalid"),
    "freshness: missing": (_freshness_junk(None), "bad_signature"),
    "freshness: a string": (_freshness_junk("proof"), "bad_signature"),
    "freshness: a list": (_freshness_junk([1, 2]), "bad_signature"),
    "freshness: an empty object": (_freshness_junk({}), "bad_signature"),
    "stale observed_at": (_stale_observed_at, "stale"),
    "signed_at beyond skew (future)": (_signed_in_future, "stale"),
    "signed_at beyond skew (past)": (_signed_in_past, "stale"),
    "observed after signed": (_observed_after_signed, "invalid"),
    "wrong host": (_wrong_host, "invalid"),
    "wrong port": (_wrong_port, "invalid"),
    "wrong SNI (caller's default)": (_wrong_sni, "invalid"),
    "wrong SNI (caller's explicit)": (_wrong_sni_explicit, "invalid"),
    "no SNI sent, the host's asked": (_no_sni_sent, "invalid"),
    "SNI sent, none asked": (_sni_sent_when_none_asked, "invalid"),
    "default SNI, another asked": (_default_sni_when_another_asked, "invalid"),
    "valid envelope then a wrong-SNI one": (_good_then_wrong_sni, "invalid"),
    # Protocol 2 signs no "age": it is signed_at (statement) - observed_at, and "observed after signed" covers < 0.
    "observation names another notary": (_names_other_notary, "invalid"),
    "valid envelope then one for another port": (_good_then_bad, "invalid"),
    "spki not matching the chain": (_malformed(_set("spki_sha256", "00" * 32)), "invalid"),
    "pin not matching the spki": (_malformed(_set("pin", "sha256/" + "A" * 43 + "=")), "invalid"),
    "unknown status": (_malformed(_set("status", "great")), "invalid"),
    "leaf summary is a string": (_malformed(_set("leaf", "leaf")), "invalid"),
    "key_history entry is a number": (_malformed(_set("key_history", [7])), "invalid"),
    "key_history is an object": (_malformed(_set("key_history", {"a": 1})), "invalid"),
    "target is a list": (_malformed(_set("target", ["example.com", 443])), "invalid"),
    "port is a string": (_malformed(lambda p: p["target"].__setitem__("port", "443")), "invalid"),
    "notary missing": (_malformed(lambda p: p.pop("notary")), "invalid"),
    "observed_at is a bool": (_malformed(_set("observed_at", True)), "invalid"),
    "chain not base64": (_malformed(_set("chain", ["!!!"])), "invalid"),
    "error status carrying a key": (_malformed(_set("status", "timeout")), "invalid"),
    "identity: another name": (_identity_name, "excluded"),
    "identity: another region": (_identity_region, "excluded"),
    "identity: signed by another key": (_identity_other_signer, "excluded"),
    "identity: names another key": (_identity_names_other_key, "excluded"),
    "identity: junk envelope": (_identity_junk, "excluded"),
    "identity: not a dict": (_identity_not_a_dict, "excluded"),
    "empty list": (_empty, "invalid"),
    "too many envelopes": (_too_many, "invalid"),
    "envelopes is None": (_junk(None), "invalid"),
    "envelopes is a string": (_junk("[{}]"), "invalid"),
    "envelopes is a dict": (_junk({"payload": "x"}), "invalid"),
    "envelope is a number": (_junk([42]), "bad_signature"),
    "envelope is None": (_junk([None]), "bad_signature"),
    "envelope is a list": (_junk([["payloadType"]]), "bad_signature"),
    "envelope is junk text": (_junk(["not json"]), "bad_signature"),
    "envelope is an empty object": (_junk([{}]), "bad_signature"),
    "envelope fields of the wrong type": (_junk([{"payloadType": OBSERVATION_TYPE, "payload": 5, "signatures": "x"}]),
                                          "bad_signature"),
}


@pytest.mark.parametrize("name", list(CORPUS))
def test_tampered_answer_is_rejected_and_not_counted(name: str, keys, leaf_der) -> None:
    make, kind = CORPUS[name]
    e = entry_for(keys[0], 0)
    envelopes, extra = make(keys, leaf_der)
    ev = check(e, copy.deepcopy(envelopes), **extra)
    assert ev.failure == kind, (name, ev.failure, ev.reason)
    assert ev.observations == ()
    assert ev.reason and "\n" not in ev.reason
    assert (ev.name, ev.key_id, ev.url) == (e.name, e.key_id, e.url)
    # decide() does not count it: two valid agreeing notaries stay two.
    good = [check(entry_for(k, i), [signed(k, leaf_der)]) for i, k in enumerate(keys[1:3], 1)]
    assert all(g.failure is None for g in good)
    agreeing, result, counted = counted_with(ev, good, spki_sha256(leaf_der))
    assert (agreeing, result, counted) == (2, kind, False)
    # Nor does it count as a disagreement for a client that sees another key.
    v = decide(ClientView("ok", "ee" * 32), good + [ev], POLICY, NOW, host=HOST, port=PORT)
    assert sum(r.result == "disagrees" for r in v.results) == 2 and v.results[-1].result == kind


def test_every_tampered_answer_would_have_counted_untampered(keys, leaf_der) -> None:
    """The corpus is meaningful: the same answer without the tampering is accepted."""
    e = entry_for(keys[0], 0)
    ev = check(e, [signed(keys[0], leaf_der)], ident=identity(keys[0], "notary-0", "eu"))
    assert ev.failure is None


def test_nonce_target_and_clock_are_the_callers(keys, leaf_der) -> None:
    e = entry_for(keys[0], 0)
    env = [signed(keys[0], leaf_der)]
    proof = stamp(env, keys[0])
    assert check(e, env, freshness=proof).failure is None
    assert check(e, env, freshness=proof, nonce="another-fresh-nonce-0000").failure == "invalid"
    assert check(e, env, host="example.org").failure == "invalid"
    assert check(e, env, port=444).failure == "invalid"
    assert check(e, env, sni="www.example.com").failure == "invalid"
    assert check(e, env, sni=HOST).failure is None
    assert check(e, env, now=NOW + POLICY.max_skew + 1).failure == "stale"


def test_explicit_sni_observation_counts_only_for_that_sni(keys, leaf_der) -> None:
    e = entry_for(keys[0], 0)
    env = [signed(keys[0], leaf_der, sni="cdn.example")]
    assert check(e, env, sni="cdn.example").failure is None
    ev = check(e, env)
    assert ev.failure == "invalid" and "SNI 'cdn.example'" in (ev.reason or "")


def test_ip_literal_host_defaults_to_no_sni(keys, leaf_der) -> None:
    e = entry_for(keys[0], 0)
    env = [signed(keys[0], leaf_der, host="192.0.2.7", sni=None)]
    assert check(e, env, host="192.0.2.7").failure is None
    env = [signed(keys[0], leaf_der, host="192.0.2.7", sni=HOST)]
    assert check(e, env, host="192.0.2.7").failure == "invalid"
    assert check(e, env, host="192.0.2.7", sni=HOST).failure is None


def test_identity_with_unknown_bundle_region_is_not_compared(keys, leaf_der) -> None:
    e = entry_for(keys[0], 0, region="unknown")
    assert check_identity(e, identity(keys[0], "notary-0", "anywhere"), now=NOW) is None
    ev = check(e, [signed(keys[0], leaf_der)], ident=identity(keys[0], "notary-0", "anywhere"))
    assert ev.failure is None
    assert "name" in (check_identity(e, identity(keys[0], "notary-x", "anywhere"), now=NOW) or "")


# -- a signed but arbitrary payload never makes check_answer raise --------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
FIELDS = ["notary", "target", "ip", "observed_at", "status", "detail", "tls_version",
          "leaf_sha256", "spki_sha256", "pin", "chain", "leaf", "key_history"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(FIELDS), value=JSON, drop=st.booleans(), extra=st.booleans())
def test_arbitrary_signed_payload_is_a_verdict_not_a_crash(keys, leaf_der, field, value, drop, extra) -> None:
    """A notary (buggy or hostile) can sign anything; the client must answer with Evidence, never raise."""
    payload = make_obs(keys[0], leaf_der).to_payload()
    if drop:
        payload.pop(field)
    else:
        payload[field] = value
    if extra:
        payload["unexpected"] = value
    ev = check(entry_for(keys[0], 0), [raw_signed(keys[0], payload)])
    assert isinstance(ev, Evidence)
    if ev.failure is None:
        (o,) = ev.observations
        assert o.notary == keys[0].key_id and o.nonce == NONCE
        assert (o.target.host, o.target.port) == (HOST, PORT)
        assert abs(o.signed_at - NOW) <= POLICY.max_skew and o.observed_at <= o.signed_at
        assert o.age >= 0 and o.target.sni == HOST
    else:
        assert ev.failure in ("invalid", "stale") and ev.observations == ()


def test_verified_envelope_memory_never_accepts_a_changed_envelope(keys, leaf_der) -> None:
    """verify_cached skips a signature only for the exact envelope that verified before, under the same key."""
    from client.verify import verify_cached
    from notary.errors import VerificationError as VE

    env = signed(keys[0], leaf_der, observed_at=NOW - 123)
    first = verify_cached(env, keys[0].verify_key, OBSERVATION_TYPE)
    again = verify_cached(copy.deepcopy(env), keys[0].verify_key, OBSERVATION_TYPE)  # a hit
    assert again.payload_bytes == first.payload_bytes and again.key_id == first.key_id
    for mutate in (lambda e: e.__setitem__("payload", flip_b64(e["payload"], 30)),
                   lambda e: e["signatures"][0].__setitem__("sig", flip_b64(e["signatures"][0]["sig"], 3)),
                   lambda e: e["signatures"][0].__setitem__("keyid", keys[1].key_id)):
        bad = copy.deepcopy(env)
        mutate(bad)
        with pytest.raises(VE):
            verify_cached(bad, keys[0].verify_key, OBSERVATION_TYPE)
    with pytest.raises(VE):  # the same envelope under another notary's key
        verify_cached(copy.deepcopy(env), keys[1].verify_key, OBSERVATION_TYPE)
    # And a whole answer checked twice (the second from memory) gives the same observations.
    e = entry_for(keys[0], 0)
    assert check(e, [env]).observations == check(e, [copy.deepcopy(env)]).observations


def test_verified_memory_beyond_the_recent_entries_still_checks_exact_bytes(keys, leaf_der, monkeypatch) -> None:
    """Once out of the recent (compared in full) entries, a hit is by digest: changed envelopes still fail."""
    import client.verify as cv
    from notary.errors import VerificationError as VE

    monkeypatch.setattr(cv, "PARSED_CACHE", 1)
    monkeypatch.setattr(cv, "_recent", type(cv._recent)())
    a = signed(keys[0], leaf_der, observed_at=NOW - 11)
    b = signed(keys[0], leaf_der, observed_at=NOW - 12)
    first = cv.verify_cached(a, keys[0].verify_key, OBSERVATION_TYPE)
    cv.verify_cached(b, keys[0].verify_key, OBSERVATION_TYPE)  # pushes a out of the recent entries
    assert tuple(cv._recent)[-1][1] == b["payload"] and len(cv._recent) == 1
    again = cv.verify_cached(copy.deepcopy(a), keys[0].verify_key, OBSERVATION_TYPE)
    assert again.payload_bytes == first.payload_bytes and again.payload is None
    bad = copy.deepcopy(a)
    bad["payload"] = flip_b64(bad["payload"], 30)
    with pytest.raises(VE):
        cv.verify_cached(bad, keys[0].verify_key, OBSERVATION_TYPE)
    with pytest.raises(VE):
        cv.verify_cached(copy.deepcopy(b), keys[1].verify_key, OBSERVATION_TYPE)
