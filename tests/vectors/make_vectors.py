#!/usr/bin/env python3
"""Regenerate the Parallax golden vectors in this directory, deterministically.

    python tests/vectors/make_vectors.py            # (re)write every vector file
    python tests/vectors/make_vectors.py --check    # exit 1 if any file would change
    python tests/vectors/make_vectors.py --new-certs  # ONLY to replace the stored certificates

Inputs are the constants below plus the two stored DER certificates
(``leaf.der``, ``ca.der``), which were generated once with ``--new-certs``
(ECDSA signatures are randomised, so certificates are inputs, not outputs).
Ed25519 is deterministic, so every other file is a pure function of the inputs:
the canonical payloads, the DSSE PAE, the signatures, the envelopes and
``vectors.json`` (the language-neutral index; see README.md).
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from notary.core import canonical
from notary.core import merkle
from notary.core.envelope import envelope_bytes, pae, sign_envelope
from notary.core.freshness import FRESHNESS_TYPE, Statement, freshness_proof, leaf_bytes, observation_digest
from notary.core.identity import IDENTITY_TYPE, Identity, sign_identity
from notary.core.keys import SigningKey
from notary.core.observation import OBSERVATION_TYPE, KeySighting, Observation, sign_observation
from notary.core.pins import LeafSummary, leaf_sha256, spki_sha256
from notary.core.target import Target
from client.bundle import BUNDLE_TYPE, Bundle, BundleEntry, sign_bundle

HERE = Path(__file__).resolve().parent

#: The fixed test key.  NEVER use it for anything but tests.
SEED = bytes(range(32))

NONCE = "parallax-test-vector-nonce-0001"
#: The freshness batch: three requests answered in one scheduling turn.
BATCH_SIGNED_AT = 1700000142
BATCH_NONCES = (NONCE, "parallax-test-vector-nonce-0002", "parallax-test-vector-nonce-0003")
OLD_SPKI = hashlib.sha256(b"parallax vector: a previous key").hexdigest()

# Summary of leaf.der, written out so the vector does not depend on how a given
# ``cryptography`` version formats names (test_vectors checks summarize_leaf agrees).
LEAF_SUMMARY = LeafSummary(
    subject="CN=example.com,O=Parallax Test Vectors",
    issuer="CN=Parallax Vector CA,O=Parallax Test Vectors",
    sans=("DNS:example.com", "DNS:www.example.com", "IP:192.0.2.10"),
    not_before=1698796800,  # 2023-11-01T00:00:00Z
    not_after=2014329600,   # 2033-10-31T00:00:00Z
)


def key() -> SigningKey:
    return SigningKey(SEED)


def chain() -> tuple[bytes, bytes]:
    return (HERE / "leaf.der").read_bytes(), (HERE / "ca.der").read_bytes()


def observation_ok() -> Observation:
    leaf, ca = chain()
    spki = spki_sha256(leaf)
    return Observation(
        notary=key().key_id,
        target=Target("example.com", 443, "example.com"),
        ip="192.0.2.10",
        observed_at=1700000000,
        status="ok",
        detail=None,
        tls_version="TLSv1.3",
        leaf_sha256=leaf_sha256(leaf),
        spki_sha256=spki,
        chain=(leaf, ca),
        leaf=LEAF_SUMMARY,
        key_history=(  # newest first, as the store returns it; includes this observation
            KeySighting(spki, 1690000100, 1700000000),
            KeySighting(OLD_SPKI, 1600000000, 1690000000),
        ),
    )


def observation_timeout() -> Observation:
    return Observation(
        notary=key().key_id,
        target=Target("2001:db8::1", 8443, None),
        ip="2001:db8::1",
        observed_at=1700000100,
        status="timeout",
        detail="connect timed out after 5s",
        tls_version=None,
        leaf_sha256=None,
        spki_sha256=None,
        chain=(),
        leaf=None,
        key_history=(),
    )


def identity() -> Identity:
    k = key()
    return Identity(
        name="Vector Notary Zürich",
        region="eu-central",
        key_id=k.key_id,
        public_key=k.verify_key.b64,
        software="parallax-notary/0.1.0",
        signed_at=1700000000,
        url="https://notary.example/",
        country="CH",
        rir="RIPE",
        lat_e6=47376887,
        lon_e6=8541694,
        limits={
            "max_targets": 16,
            "max_body_bytes": 65536,
            "ttl_seconds": 300,
            "connect_timeout_ms": 5000,
            "handshake_timeout_ms": 5000,
            "max_handshake_bytes": 131072,
            "rate_per_client_milli": 20000,
            "burst_per_client": 40,
        },
    )


BUNDLE_VERSION = 7
BUNDLE_EXPIRES = 1735689600  # 2025-01-01T00:00:00Z


def bundle() -> Bundle:
    """A two-notary bundle as signed (bundle_version and expires set; signed by the test key as operator)."""
    k, other = key(), SigningKey(bytes(range(1, 33)))
    return Bundle((
        BundleEntry("Vector Notary Zürich", "https://notary.example", "eu-central", k.key_id, k.verify_key.b64,
                    "CH", "RIPE"),
        BundleEntry("vector-us", "https://us.notary.example:8443", "us-east", other.key_id, other.verify_key.b64),
    ), bundle_version=BUNDLE_VERSION, expires=BUNDLE_EXPIRES)


def payload_of(obj: Any) -> Any:
    """The JSON object a model signs: ``to_payload()``, or a bundle's ``to_json()``."""
    return obj.to_json() if isinstance(obj, Bundle) else obj.to_payload()


#: A fixed gateway key configuration (RFC 9458 Appendix A's: key id 1, X25519,
#: HKDF-SHA256 with AES-128-GCM or ChaCha20-Poly1305) as ``application/ohttp-keys``.
OHTTP_KEYS = bytes.fromhex(
    "002d01002031e1f05a740102115220e9af918f738674aec95f54db6e04eb705aae8e79815500080001000100010003"
)


def identity_ohttp() -> Identity:
    """The identity of a notary that is an Oblivious HTTP gateway and a relay."""
    return replace(identity(), ohttp_keys=base64.b64encode(OHTTP_KEYS).decode("ascii"), relay=True)


def observation_busy() -> Observation:
    return Observation(
        notary=key().key_id,
        target=Target("busy.example", 443, "busy.example"),
        ip=None,
        observed_at=1700000200,
        status="busy",
        detail="no probe slot within 3s",
        tls_version=None,
        leaf_sha256=None,
        spki_sha256=None,
        chain=(),
        leaf=None,
        key_history=(),
    )


def batch_leaves() -> list[bytes]:
    """The three freshness leaves of the vector batch (see README.md): two clients' requests answered
    with the same observation_ok (signed once), one fresh observation_timeout."""
    ok = observation_digest(canonical.encode(observation_ok().to_payload()))
    to = observation_digest(canonical.encode(observation_timeout().to_payload()))
    return [
        leaf_bytes(BATCH_NONCES[0], [ok], "cached"),
        leaf_bytes(BATCH_NONCES[1], [to], "fresh"),
        leaf_bytes(BATCH_NONCES[2], [ok], "cached"),
    ]


def statement() -> Statement:
    leaves = batch_leaves()
    root = merkle.root_hash([merkle.leaf_hash(x) for x in leaves])
    return Statement(key().key_id, BATCH_SIGNED_AT, len(leaves), root.hex())


def signed_vectors() -> dict[str, tuple[str, Any, dict[str, Any]]]:
    """name -> (payload type, model object, envelope dict)."""
    k = key()
    ok, to, ident, bun, ident_o, st = (observation_ok(), observation_timeout(), identity(), bundle(),
                                       identity_ohttp(), statement())
    return {
        "observation_ok": (OBSERVATION_TYPE, ok, sign_observation(ok, k)),
        "observation_timeout": (OBSERVATION_TYPE, to, sign_observation(to, k)),
        "observation_busy": (OBSERVATION_TYPE, observation_busy(), sign_observation(observation_busy(), k)),
        "identity": (IDENTITY_TYPE, ident, sign_identity(ident, k)),
        "bundle": (BUNDLE_TYPE, bun, sign_bundle(bun, k, version=BUNDLE_VERSION, expires=BUNDLE_EXPIRES)),
        "identity_ohttp": (IDENTITY_TYPE, ident_o, sign_identity(ident_o, k)),
        "freshness_statement": (FRESHNESS_TYPE, st, sign_envelope(FRESHNESS_TYPE, canonical.encode(st.to_payload()), k)),
    }


def answers() -> dict[str, dict[str, Any]]:
    """One complete answer (``results[i]`` of POST /v1/observe) per leaf of the batch."""
    signed = signed_vectors()
    envs = {"ok": signed["observation_ok"][2], "to": signed["observation_timeout"][2]}
    hashes = [merkle.leaf_hash(x) for x in batch_leaves()]
    st_env = signed["freshness_statement"][2]
    out = {}
    for i, (name, target, es) in enumerate((
        ("answer_ok", observation_ok().target, [envs["ok"]]),
        ("answer_timeout", observation_timeout().target, [envs["to"]]),
        ("answer_ok_other_client", observation_ok().target, [envs["ok"]]),
    )):
        proof = freshness_proof(st_env, batch_leaves()[i], i, merkle.inclusion_path(hashes, i))
        out[name] = {"target": target.to_json(), "envelopes": es, "freshness": proof}
    return out


def _negative_answers(answer: dict[str, Any]) -> dict[str, tuple[dict[str, Any], str]]:
    """Answers derived from answer_ok that a verifier MUST reject for nonce NONCE."""
    other = SigningKey(bytes(range(1, 33)))

    def copy() -> dict[str, Any]:
        return json.loads(json.dumps(answer))

    wrong_path = copy()
    wrong_path["freshness"]["path"][0] = "00" * 32
    wrong_index = copy()
    wrong_index["freshness"]["index"] = 1
    other_leaf = copy()
    other_leaf["freshness"]["leaf"] = _b64(batch_leaves()[1])
    other_key = copy()
    st_payload = base64.b64decode(answer["freshness"]["statement"]["payload"])
    other_key["freshness"]["statement"] = sign_envelope(FRESHNESS_TYPE, st_payload, other)
    other_key["freshness"]["statement"]["signatures"][0]["keyid"] = key().key_id
    swapped = copy()
    swapped["envelopes"] = [signed_vectors()["observation_timeout"][2]]
    return {
        "answer_wrong_path": (wrong_path, "a path hash replaced: the leaf is not under the signed root"),
        "answer_wrong_index": (wrong_index, "the right path under the wrong index"),
        "answer_other_leaf": (other_leaf, "another request's leaf (another nonce) with this leaf's path"),
        "answer_statement_by_other_key": (other_key, "freshness statement signed by another key, filed under the trusted key id"),
        "answer_digest_mismatch": (swapped, "the envelope is not the observation the leaf names"),
    }


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _negative(envelope: dict[str, Any]) -> dict[str, tuple[dict[str, Any], str]]:
    """Envelopes derived from observation_ok that a verifier MUST reject."""
    sig = base64.b64decode(envelope["signatures"][0]["sig"])
    payload = base64.b64decode(envelope["payload"])
    other = SigningKey(bytes(range(1, 33)))

    def with_(**changes: Any) -> dict[str, Any]:
        env = json.loads(json.dumps(envelope))
        for k, v in changes.items():
            if k in ("keyid", "sig"):
                env["signatures"][0][k] = v
            else:
                env[k] = v
        return env

    # The signature's last base64 character before "==" carries 2 unused bits.
    sig_b64 = envelope["signatures"][0]["sig"]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = sig_b64[-3]
    noncanon = sig_b64[:-3] + alphabet[alphabet.index(last) ^ 1] + "=="
    assert base64.b64decode(noncanon) == sig
    tampered = payload.replace(b'"observed_at":1700000000', b'"observed_at":1700000001')
    assert tampered != payload
    return {
        "bad_signature": (with_(sig=_b64(sig[:-1] + bytes([sig[-1] ^ 1]))), "signature does not verify"),
        "tampered_payload": (with_(payload=_b64(tampered)), "payload changed after signing"),
        "wrong_payload_type": (with_(payloadType=IDENTITY_TYPE), "payloadType is not the observation type"),
        "unknown_keyid": (with_(keyid=other.key_id), "no signature by the trusted key id"),
        "noncanonical_base64_sig": (with_(sig=noncanon), "signature base64 has non-zero padding bits"),
        "signed_by_other_key": (
            with_(sig=_b64(other.sign(pae(OBSERVATION_TYPE, payload)))),
            "valid signature by a different key, filed under the trusted key id",
        ),
    }


def noncanonical_payload() -> tuple[bytes, dict[str, Any]]:
    """observation_ok's payload serialised NON-canonically (indented, keys unsorted) and signed.

    It MUST verify: the signature is over the exact payload bytes; verifiers
    never re-canonicalise.  It parses to the same observation.
    """
    body = json.dumps(observation_ok().to_payload(), indent=1, ensure_ascii=True).encode("ascii")
    return body, sign_envelope(OBSERVATION_TYPE, body, key())


def build() -> dict[str, bytes]:
    """Every generated file: name -> exact bytes.  Pure function of the inputs."""
    k = key()
    files: dict[str, bytes] = {}
    index: dict[str, Any] = {
        "description": "Parallax protocol golden vectors; see README.md and docs/protocol.md",
        "key": {
            "seed_hex": SEED.hex(),
            "public_key_b64": k.verify_key.b64,
            "public_key_hex": k.verify_key.raw.hex(),
            "key_id": k.key_id,
        },
        "certificates": {},
        "vectors": {},
        "must_verify": {},
        "must_reject": {},
    }
    leaf, ca = chain()
    for name, der in (("leaf.der", leaf), ("ca.der", ca)):
        index["certificates"][name] = {
            "der_b64": _b64(der),
            "sha256": hashlib.sha256(der).hexdigest(),
            "spki_sha256": spki_sha256(der),
        }
    for name, (ptype, obj, env) in signed_vectors().items():
        payload = canonical.encode(payload_of(obj))
        signing_input = pae(ptype, payload)
        sig = base64.b64decode(env["signatures"][0]["sig"])
        envb = envelope_bytes(env)
        files[f"{name}.payload.json"] = payload
        files[f"{name}.pae.bin"] = signing_input
        files[f"{name}.sig.bin"] = sig
        files[f"{name}.envelope.json"] = envb
        index["vectors"][name] = {
            "payload_type": ptype,
            "payload_file": f"{name}.payload.json",
            "payload_len": len(payload),
            "payload_sha256": hashlib.sha256(payload).hexdigest(),
            "pae_file": f"{name}.pae.bin",
            "pae_prefix": signing_input[: signing_input.index(b"{")].decode("ascii"),
            "pae_sha256": hashlib.sha256(signing_input).hexdigest(),
            "sig_file": f"{name}.sig.bin",
            "sig_b64": _b64(sig),
            "sig_hex": sig.hex(),
            "envelope_file": f"{name}.envelope.json",
            "envelope_sha256": hashlib.sha256(envb).hexdigest(),
        }
    body, env = noncanonical_payload()
    files["noncanonical_payload.envelope.json"] = envelope_bytes(env)
    index["must_verify"]["noncanonical_payload"] = {
        "payload_type": OBSERVATION_TYPE,
        "envelope_file": "noncanonical_payload.envelope.json",
        "why": "payload is observation_ok's object serialised non-canonically; signature is over those exact bytes",
        "parses_like": "observation_ok",
    }
    for name, (env, why) in _negative(signed_vectors()["observation_ok"][2]).items():
        fname = f"reject_{name}.envelope.json"
        files[fname] = envelope_bytes(env)
        index["must_reject"][name] = {"payload_type": OBSERVATION_TYPE, "envelope_file": fname, "why": why}
    # Freshness: the batch, its Merkle tree (RFC 9162 hashing), and complete answers.
    leaves = batch_leaves()
    hashes = [merkle.leaf_hash(x) for x in leaves]
    batch: dict[str, Any] = {
        "signed_at": BATCH_SIGNED_AT,
        "leaves": [],
        "node_0_1": merkle.node_hash(hashes[0], hashes[1]).hex(),
        "root": merkle.root_hash(hashes).hex(),
        "statement": "freshness_statement",
        "observation_digests": {
            "observation_ok": observation_digest(canonical.encode(observation_ok().to_payload())),
            "observation_timeout": observation_digest(canonical.encode(observation_timeout().to_payload())),
        },
    }
    for i, (leaf, h) in enumerate(zip(leaves, hashes)):
        fname = f"freshness_leaf{i}.json"
        files[fname] = leaf
        batch["leaves"].append({
            "file": fname, "nonce": BATCH_NONCES[i], "leaf_hash": h.hex(),
            "path": [p.hex() for p in merkle.inclusion_path(hashes, i)],
        })
    index["freshness"] = batch
    index["answers"] = {}
    for i, (name, ans) in enumerate(answers().items()):
        fname = f"{name}.json"
        files[fname] = canonical.encode(ans)
        index["answers"][name] = {"file": fname, "nonce": BATCH_NONCES[i], "verify_at": BATCH_SIGNED_AT}
    index["must_reject_answers"] = {}
    for name, (ans, why) in _negative_answers(answers()["answer_ok"]).items():
        fname = f"reject_{name}.json"
        files[fname] = canonical.encode(ans)
        index["must_reject_answers"][name] = {"file": fname, "nonce": NONCE, "why": why}
    files["vectors.json"] = (json.dumps(index, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
    return files


def new_certs() -> None:
    """Generate leaf.der and ca.der ONCE (ECDSA P-256).  Not deterministic; overwrites the inputs."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import NameOID

    org = x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Parallax Test Vectors")
    ca_name = x509.Name([org, x509.NameAttribute(NameOID.COMMON_NAME, "Parallax Vector CA")])
    leaf_name = x509.Name([org, x509.NameAttribute(NameOID.COMMON_NAME, "example.com")])
    start = dt.datetime.fromtimestamp(LEAF_SUMMARY.not_before, dt.timezone.utc)
    end = dt.datetime.fromtimestamp(LEAF_SUMMARY.not_after, dt.timezone.utc)
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(1).not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder().subject_name(leaf_name).issuer_name(ca_name)
        .public_key(leaf_key.public_key()).serial_number(2).not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("example.com"), x509.DNSName("www.example.com"),
            x509.IPAddress(ipaddress.ip_address("192.0.2.10")),
        ]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (HERE / "ca.der").write_bytes(ca.public_bytes(Encoding.DER))
    (HERE / "leaf.der").write_bytes(leaf.public_bytes(Encoding.DER))


def main(argv: list[str]) -> int:
    if "--new-certs" in argv:
        new_certs()
    files = build()
    stale = [n for n, b in files.items() if not (HERE / n).exists() or (HERE / n).read_bytes() != b]
    if "--check" in argv:
        for n in stale:
            print(f"stale: {n}", file=sys.stderr)
        return 1 if stale else 0
    for n in stale:
        (HERE / n).write_bytes(files[n])
        print(f"wrote {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
