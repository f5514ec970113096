#!/usr/bin/env python3
"""Verify one Parallax answer (protocol version 2) with PyNaCl and the standard library only.

    python verify_answer.py ANSWER.json PUBLIC_KEY_B64 NONCE [NOW]

ANSWER.json is one element of ``results`` of ``POST /v1/observe``:
``{"target", "envelopes": [...], "freshness": {"statement", "leaf", "index", "path"}}``.
Prints the verified observations and exits 0, or prints why and exits 1.
It imports nothing from Parallax: it is the recipe of docs/protocol.md,
section 12, written out.  (It does not re-check the certificate chain
against ``spki_sha256``; a full verifier does, section 6.)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import sys
import time

import nacl.exceptions
import nacl.signing

OBSERVATION_TYPE = "application/vnd.parallax.observation+json; version=2"
FRESHNESS_TYPE = "application/vnd.parallax.freshness+json; version=1"


class Rejected(Exception):
    pass


def b64(text: object) -> bytes:
    """Strict, canonical base64 (re-encoding must give the same text)."""
    if not isinstance(text, str):
        raise Rejected("base64 field is not a string")
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise Rejected("invalid base64") from None
    if base64.b64encode(raw).decode() != text:
        raise Rejected("non-canonical base64")
    return raw


def pae(payload_type: str, payload: bytes) -> bytes:
    t = payload_type.encode()
    return b"DSSEv1 %d %b %d %b" % (len(t), t, len(payload), payload)


def open_envelope(env: object, key: nacl.signing.VerifyKey, key_id: str, payload_type: str) -> bytes:
    """The exact payload bytes, after the signature over PAE(type, bytes) verified.  Nothing parsed before."""
    if not isinstance(env, dict) or env.get("payloadType") != payload_type:
        raise Rejected(f"not a {payload_type} envelope")
    payload = b64(env.get("payload"))
    for sig in (env.get("signatures") or [])[:4]:
        if isinstance(sig, dict) and sig.get("keyid") == key_id:
            try:
                key.verify(pae(payload_type, payload), b64(sig.get("sig")))
                return payload
            except (nacl.exceptions.BadSignatureError, Rejected):
                continue
    raise Rejected("no valid signature by the notary's key")


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def root_from_path(index: int, size: int, h: bytes, path: list[bytes]) -> bytes | None:
    """RFC 9162, section 2.1.3.2."""
    if not 0 <= index < size:
        return None
    fn, sn = index, size - 1
    for p in path:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            h = node_hash(p, h)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            h = node_hash(h, p)
        fn >>= 1
        sn >>= 1
    return h if sn == 0 else None


def verify(answer: dict, public_key_b64: str, nonce: str, now: int, max_skew: int = 300) -> list[dict]:
    raw_key = b64(public_key_b64)
    key = nacl.signing.VerifyKey(raw_key)
    key_id = "ed25519:" + hashlib.sha256(raw_key).hexdigest()
    # 1. Every observation envelope: signature first; digest = SHA-256 of the exact payload bytes.
    payloads = [open_envelope(e, key, key_id, OBSERVATION_TYPE) for e in answer["envelopes"]]
    digests = [hashlib.sha256(p).hexdigest() for p in payloads]
    # 2. The freshness statement: signature, then parse.
    fresh = answer["freshness"]
    statement = json.loads(open_envelope(fresh["statement"], key, key_id, FRESHNESS_TYPE))
    if statement["notary"] != key_id:
        raise Rejected("statement names another notary")
    # 3. The leaf is under the signed root (its exact bytes hashed); only then is it parsed.
    leaf = b64(fresh["leaf"])
    path = [bytes.fromhex(p) for p in fresh["path"]]
    index = fresh["index"]
    if type(index) is not int:
        raise Rejected("index is not an integer")
    root = root_from_path(index, statement["tree_size"], leaf_hash(leaf), path)
    if root is None or root.hex() != statement["root"]:
        raise Rejected("leaf is not under the signed Merkle root")
    leaf_obj = json.loads(leaf)
    # 4. The leaf binds this request's nonce to exactly these observations.
    if leaf_obj["nonce"] != nonce:
        raise Rejected("nonce mismatch (a replayed answer?)")
    if leaf_obj["observations"] != digests:
        raise Rejected("the leaf names other observations")
    # 5. Times, then the observations themselves.
    signed_at = statement["signed_at"]
    if abs(signed_at - now) > max_skew:
        raise Rejected(f"signed_at is {signed_at - now:+d}s from now")
    out = []
    for p in payloads:
        obs = json.loads(p)
        if obs["notary"] != key_id or obs["target"] != answer["target"]:
            raise Rejected("observation names another notary or target")
        if obs["observed_at"] > signed_at:
            raise Rejected("observed after the statement was signed")
        out.append(dict(obs, nonce=nonce, signed_at=signed_at, source=leaf_obj["source"]))
    return out


def main(argv: list[str]) -> int:
    if len(argv) not in (4, 5):
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    with open(argv[1], "rb") as f:
        answer = json.load(f)
    now = int(argv[4]) if len(argv) == 5 else int(time.time())
    try:
        observations = verify(answer, argv[2], argv[3], now)
    except (Rejected, KeyError, TypeError, ValueError) as exc:
        print(f"REJECTED: {type(exc).__name__ if not isinstance(exc, Rejected) else ''}{exc}")
        return 1
    for o in observations:
        print(f"OK {o['target']['host']}:{o['target']['port']} ip={o['ip']} status={o['status']} "
              f"pin={o['pin']} observed_at={o['observed_at']} signed_at={o['signed_at']} source={o['source']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
