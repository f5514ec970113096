"""Golden vectors: every stored byte is rebuilt from the model objects and compared exactly.

The vectors live in tests/vectors/ (README.md there explains them; docs/protocol.md
is the specification).  These tests check, for each signed vector, the canonical
payload bytes, the DSSE PAE, the Ed25519 signature and the envelope bytes, and
that the stored envelope verifies with the stored public key and parses back to
the same model object.  Where it is cheap, a check is made independently of
notary.core (hashlib, PyNaCl, json) so the vectors do not merely agree with
themselves.
"""

from __future__ import annotations

import base64
import dataclasses
import subprocess
import sys
import hashlib
import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import nacl.signing
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from notary.core import (
    FRESHNESS_TYPE,
    IDENTITY_TYPE,
    OBSERVATION_TYPE,
    Statement,
    ProbeResult,
    Target,
    VerifyKey,
    canonical_decode,
    pae,
    pin_from_spki_hex,
    spki_sha256,
    verify_answer,
    verify_envelope,
    verify_identity,
    verify_observation,
)
from notary.core.pins import summarize_leaf
from notary.errors import InputError, VerificationError
from client.bundle import BUNDLE_TYPE, parse_bundle

VECTORS = Path(__file__).parent / "vectors"
_spec = importlib.util.spec_from_file_location("parallax_make_vectors", VECTORS / "make_vectors.py")
assert _spec and _spec.loader
mv = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mv)

INDEX = json.loads((VECTORS / "vectors.json").read_text("utf-8"))
SIGNED = ["observation_ok", "observation_timeout", "observation_busy", "identity", "bundle", "identity_ohttp",
          "freshness_statement"]
INPUT_FILES = {"make_vectors.py", "README.md", ".gitattributes", "leaf.der", "ca.der"}


def stored(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


def trusted_key() -> VerifyKey:
    return VerifyKey.from_b64(INDEX["key"]["public_key_b64"])


def model(name: str):
    return mv.signed_vectors()[name][1]


# -- regeneration ---------------------------------------------------------------


def test_every_generated_file_is_byte_identical_to_the_stored_one() -> None:
    built = mv.build()
    for name, data in built.items():
        assert stored(name) == data, f"{name} differs from what make_vectors.py builds"


def test_no_stray_or_missing_files() -> None:
    present = {p.name for p in VECTORS.iterdir() if p.is_file()}
    assert present - INPUT_FILES == set(mv.build())
    assert INPUT_FILES <= present


def test_build_is_deterministic() -> None:
    assert mv.build() == mv.build()


# -- the key ----------------------------------------------------------------------


def test_key_material_is_consistent_independently_of_notary_core() -> None:
    k = INDEX["key"]
    seed = bytes.fromhex(k["seed_hex"])
    assert seed == bytes(range(32))
    pub = bytes(nacl.signing.SigningKey(seed).verify_key)
    assert pub.hex() == k["public_key_hex"]
    assert base64.b64encode(pub).decode() == k["public_key_b64"]
    assert k["key_id"] == "ed25519:" + hashlib.sha256(pub).hexdigest()
    assert trusted_key().key_id == k["key_id"] == mv.key().key_id


# -- signed vectors ---------------------------------------------------------------


@pytest.mark.parametrize("name", SIGNED)
def test_payload_pae_signature_and_envelope(name: str) -> None:
    entry = INDEX["vectors"][name]
    ptype = entry["payload_type"]
    payload = stored(entry["payload_file"])
    signing_input = stored(entry["pae_file"])
    sig = stored(entry["sig_file"])
    envb = stored(entry["envelope_file"])

    # Canonical payload: the model's payload, RFC 8785 (ASCII keys sort the same under json).
    obj = json.loads(payload)
    assert obj == mv.payload_of(model(name))
    assert payload == json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert len(payload) == entry["payload_len"]
    assert hashlib.sha256(payload).hexdigest() == entry["payload_sha256"]

    # PAE, built by hand from the DSSE definition.
    t = ptype.encode()
    expected = b"DSSEv1 " + str(len(t)).encode() + b" " + t + b" " + str(len(payload)).encode() + b" " + payload
    assert signing_input == expected == pae(ptype, payload)
    assert signing_input.startswith(entry["pae_prefix"].encode())
    assert hashlib.sha256(signing_input).hexdigest() == entry["pae_sha256"]

    # Ed25519 is deterministic: the same seed signs the same bytes identically.
    seed = bytes.fromhex(INDEX["key"]["seed_hex"])
    assert nacl.signing.SigningKey(seed).sign(signing_input).signature == sig
    nacl.signing.VerifyKey(bytes.fromhex(INDEX["key"]["public_key_hex"])).verify(signing_input, sig)
    assert sig.hex() == entry["sig_hex"] and base64.b64decode(entry["sig_b64"]) == sig

    # Envelope: canonical JSON of the three DSSE fields.
    env = json.loads(envb)
    assert env == {
        "payload": base64.b64encode(payload).decode(),
        "payloadType": ptype,
        "signatures": [{"keyid": INDEX["key"]["key_id"], "sig": base64.b64encode(sig).decode()}],
    }
    assert envb == json.dumps(env, sort_keys=True, separators=(",", ":")).encode()
    assert hashlib.sha256(envb).hexdigest() == entry["envelope_sha256"]


@pytest.mark.parametrize("name", SIGNED)
def test_stored_envelope_verifies_and_parses_back_to_the_model(name: str) -> None:
    entry = INDEX["vectors"][name]
    envb = stored(entry["envelope_file"])
    verified = verify_envelope(envb, trusted_key(), entry["payload_type"])
    assert verified.payload_bytes == stored(entry["payload_file"])
    assert verified.key_id == INDEX["key"]["key_id"]
    parsed: object
    if entry["payload_type"] == OBSERVATION_TYPE:
        parsed = verify_observation(envb, trusted_key())
    elif entry["payload_type"] == BUNDLE_TYPE:
        # Signed by the test key as an operator key; parsed before its expiry (a pure parse).
        bundle = parse_bundle(envb, [trusted_key()], now=mv.BUNDLE_EXPIRES - 1)
        assert bundle.signed_by == INDEX["key"]["key_id"]
        assert (bundle.bundle_version, bundle.expires) == (7, 1735689600)
        parsed = replace(bundle, signed_by=None)
    elif entry["payload_type"] == FRESHNESS_TYPE:
        parsed = Statement.from_payload(verified.payload)
    else:
        assert entry["payload_type"] == IDENTITY_TYPE
        parsed = verify_identity(envb, trusted_key())
    assert parsed == model(name)
    # The str and dict forms of the same envelope verify identically.
    assert verify_envelope(envb.decode(), trusted_key(), entry["payload_type"]) == verified
    assert verify_envelope(json.loads(envb), trusted_key(), entry["payload_type"]) == verified


@pytest.mark.parametrize("name", SIGNED)
def test_stored_envelope_fails_under_another_key_or_type(name: str) -> None:
    entry = INDEX["vectors"][name]
    envb = stored(entry["envelope_file"])
    other = mv.SigningKey(bytes(range(1, 33))).verify_key
    with pytest.raises(VerificationError):
        verify_envelope(envb, other, entry["payload_type"])
    wrong_type = IDENTITY_TYPE if entry["payload_type"] == OBSERVATION_TYPE else OBSERVATION_TYPE
    with pytest.raises(VerificationError):
        verify_envelope(envb, trusted_key(), wrong_type)


def test_must_verify_noncanonical_payload() -> None:
    entry = INDEX["must_verify"]["noncanonical_payload"]
    envb = stored(entry["envelope_file"])
    verified = verify_envelope(envb, trusted_key(), entry["payload_type"])
    canonical_payload = stored(INDEX["vectors"]["observation_ok"]["payload_file"])
    assert verified.payload_bytes != canonical_payload  # exact bytes, never re-serialised
    assert b"\n" in verified.payload_bytes
    assert verify_observation(envb, trusted_key()) == model(entry["parses_like"])


@pytest.mark.parametrize("name", sorted(INDEX["must_reject"]))
def test_must_reject(name: str) -> None:
    entry = INDEX["must_reject"][name]
    envb = stored(entry["envelope_file"])
    with pytest.raises(VerificationError):
        verify_envelope(envb, trusted_key(), entry["payload_type"])
    with pytest.raises(VerificationError):
        verify_observation(envb, trusted_key())


# -- the certificates ---------------------------------------------------------------


def test_certificates_match_the_index_and_the_observation() -> None:
    leaf, ca = stored("leaf.der"), stored("ca.der")
    certs = INDEX["certificates"]
    for name, der in (("leaf.der", leaf), ("ca.der", ca)):
        assert base64.b64decode(certs[name]["der_b64"]) == der
        assert certs[name]["sha256"] == hashlib.sha256(der).hexdigest()
        # Independent SPKI hash: re-encode the parsed public key with cryptography.
        spki = x509.load_der_x509_certificate(der).public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        assert certs[name]["spki_sha256"] == hashlib.sha256(spki).hexdigest() == spki_sha256(der)
    payload = json.loads(stored("observation_ok.payload.json"))
    assert payload["chain"] == [certs["leaf.der"]["der_b64"], certs["ca.der"]["der_b64"]]
    assert payload["spki_sha256"] == certs["leaf.der"]["spki_sha256"]
    assert payload["leaf_sha256"] == certs["leaf.der"]["sha256"]
    assert payload["pin"] == "sha256/" + base64.b64encode(bytes.fromhex(payload["spki_sha256"])).decode()
    assert payload["pin"] == pin_from_spki_hex(payload["spki_sha256"])


def test_the_prober_path_summarises_the_leaf_like_the_vector() -> None:
    leaf, ca = stored("leaf.der"), stored("ca.der")
    assert summarize_leaf(leaf) == mv.LEAF_SUMMARY
    probe = ProbeResult.success(Target("example.com", 443, "example.com"), "192.0.2.10", 1700000000, "TLSv1.3", (leaf, ca))
    ok = model("observation_ok")
    assert (probe.status, probe.spki_sha256, probe.leaf_sha256, probe.leaf, probe.chain) == (
        "ok", ok.spki_sha256, ok.leaf_sha256, ok.leaf, ok.chain,
    )


def test_vectors_json_is_valid_strict_json() -> None:
    canonical_decode(stored("vectors.json"))


def test_bundle_vector_expiry_and_rollback_are_enforced_on_the_signed_bytes() -> None:
    """The signed bundle vector is refused at its ``expires`` and below a higher accepted version."""
    envb = stored("bundle.envelope.json")
    key_id = INDEX["key"]["key_id"]
    assert parse_bundle(envb, [trusted_key()], now=mv.BUNDLE_EXPIRES - 1, highest={key_id: 7}).bundle_version == 7
    with pytest.raises(InputError) as info:
        parse_bundle(envb, [trusted_key()], now=mv.BUNDLE_EXPIRES)
    assert info.value.code == "bundle_expired"
    with pytest.raises(InputError) as info:
        parse_bundle(envb, [trusted_key()], now=mv.BUNDLE_EXPIRES - 1, highest={key_id: 8})
    assert info.value.code == "bundle_rollback"
    payload = json.loads(stored("bundle.payload.json"))
    assert (payload["bundle_version"], payload["expires"], payload["version"]) == (7, 1735689600, 1)


# -- freshness: the batch, its Merkle tree and complete answers (protocol 2) --------------------


def _h(prefix: bytes, data: bytes) -> bytes:
    return hashlib.sha256(prefix + data).digest()


def test_freshness_tree_independently_of_notary_core() -> None:
    """Leaf and node hashes, root and paths recomputed with hashlib alone (RFC 9162 section 2.1)."""
    f = INDEX["freshness"]
    leaves = [stored(x["file"]) for x in f["leaves"]]
    lh = [_h(b"\x00", x) for x in leaves]
    assert [x["leaf_hash"] for x in f["leaves"]] == [h.hex() for h in lh]
    n01 = _h(b"\x01", lh[0] + lh[1])
    assert f["node_0_1"] == n01.hex()
    root = _h(b"\x01", n01 + lh[2])  # 3 leaves: split at 2
    assert f["root"] == root.hex()
    assert f["leaves"][0]["path"] == [lh[1].hex(), lh[2].hex()]
    assert f["leaves"][1]["path"] == [lh[0].hex(), lh[2].hex()]
    assert f["leaves"][2]["path"] == [n01.hex()]
    statement = json.loads(stored(INDEX["vectors"]["freshness_statement"]["payload_file"]))
    assert statement == {"notary": INDEX["key"]["key_id"], "signed_at": f["signed_at"], "tree_size": 3, "root": f["root"]}
    for i, x in enumerate(f["leaves"]):
        leaf = json.loads(leaves[i])
        assert leaf["nonce"] == x["nonce"] and set(leaf) == {"nonce", "observations", "source"}
        assert leaves[i] == json.dumps(leaf, sort_keys=True, separators=(",", ":")).encode()
    digests = f["observation_digests"]
    for name in ("observation_ok", "observation_timeout"):
        assert digests[name] == hashlib.sha256(stored(INDEX["vectors"][name]["payload_file"])).hexdigest()
    assert json.loads(leaves[2])["observations"] == json.loads(leaves[0])["observations"] == [digests["observation_ok"]]
    assert json.loads(leaves[1])["observations"] == [digests["observation_timeout"]]


@pytest.mark.parametrize("name", sorted(INDEX["answers"]))
def test_answer_verifies_with_its_nonce_only(name: str) -> None:
    entry = INDEX["answers"][name]
    answer = json.loads(stored(entry["file"]))
    obs = verify_answer(answer["envelopes"], answer["freshness"], trusted_key(), nonce=entry["nonce"])
    assert all(o.nonce == entry["nonce"] and o.signed_at == INDEX["freshness"]["signed_at"] for o in obs)
    assert obs[0].target.to_json() == answer["target"]
    stable = [dataclasses.replace(o, nonce="", signed_at=0, source="", age=0) for o in obs]
    expected = {"answer_ok": ["observation_ok"], "answer_timeout": ["observation_timeout"],
                "answer_ok_other_client": ["observation_ok"]}[name]
    assert stable == [model(n) for n in expected]
    for other in INDEX["answers"].values():
        if other["nonce"] != entry["nonce"]:
            with pytest.raises(VerificationError):
                verify_answer(answer["envelopes"], answer["freshness"], trusted_key(), nonce=other["nonce"])


@pytest.mark.parametrize("name", sorted(INDEX["must_reject_answers"]))
def test_must_reject_answer(name: str) -> None:
    entry = INDEX["must_reject_answers"][name]
    answer = json.loads(stored(entry["file"]))
    with pytest.raises(VerificationError):
        verify_answer(answer["envelopes"], answer["freshness"], trusted_key(), nonce=entry["nonce"])


# -- the third-party recipe (docs/recipes/verify_answer.py: PyNaCl + hashlib, no Parallax import) ---

RECIPE = Path(__file__).resolve().parent.parent / "docs" / "recipes" / "verify_answer.py"


def _recipe(file: str, nonce: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-I", str(RECIPE), str(VECTORS / file), INDEX["key"]["public_key_b64"],
                           nonce, str(INDEX["freshness"]["signed_at"])], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("name", sorted(INDEX["answers"]))
def test_standalone_recipe_accepts_the_vector_answers(name: str) -> None:
    entry = INDEX["answers"][name]
    p = _recipe(entry["file"], entry["nonce"])
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.startswith("OK ")
    assert _recipe(entry["file"], "some-other-nonce-000001").returncode == 1


@pytest.mark.parametrize("name", sorted(INDEX["must_reject_answers"]))
def test_standalone_recipe_rejects_the_vector_rejects(name: str) -> None:
    entry = INDEX["must_reject_answers"][name]
    p = _recipe(entry["file"], entry["nonce"])
    assert p.returncode == 1 and p.stdout.startswith("REJECTED"), p.stdout + p.stderr
