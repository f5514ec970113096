"""Freshness: binding a client's nonce to observations signed once, in batches.

Theory of operation
-------------------
Protocol version 2 separates *what a notary saw* from *when it vouched for it
to whom*:

* an **observation** (:mod:`notary.core.observation`) is signed once, when the
  probe round is made; it carries no nonce and no signing time, so the same
  envelope bytes are served to every client that asks while it is fresh.  Its
  **digest** is the lower-case hex SHA-256 of its exact payload bytes (the
  bytes the DSSE signature covers).
* a **freshness leaf** is the RFC 8785 JSON object
  ``{"nonce", "observations": [digest, ...], "source"}``: one per answered
  target of a request.  ``observations`` lists the digests of the answer's
  observation envelopes in answer order; ``source`` is ``"fresh"`` or
  ``"cached"``.
* a **freshness statement** (payload type :data:`FRESHNESS_TYPE`) is signed once
  per scheduling turn of the notary: ``{"notary", "signed_at", "tree_size",
  "root"}``, where ``root`` is the hex Merkle root (RFC 9162, see
  :mod:`notary.core.merkle`) over the leaves of every target answered in that
  turn, in the order the notary collected them.
* an answer's ``freshness`` member is ``{"statement": <envelope>, "leaf":
  <base64 of the leaf bytes>, "index": int, "path": [hex, ...]}``.

Verification (:func:`verify_answer`) checks, in this order, and parses nothing
before its signature or its Merkle path has been checked: every observation
envelope's signature; the statement envelope's signature; the statement's
shape and signer; the leaf's inclusion path against the signed root; only then
the leaf's JSON, its nonce and the list of digests against the digests of the
envelopes actually received.  Nothing is re-serialised to verify: digests and
leaf hashes are computed over the exact bytes received.

Pure: no clock, no I/O.  ``now`` checks (skew, age) belong to the caller.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any, Callable, Sequence

from notary.core import canonical, merkle
from notary.core.envelope import Verified, sign_envelope, verify_envelope
from notary.core.keys import SigningKey, VerifyKey
from notary.core.observation import OBSERVATION_TYPE, SOURCES, Observation
from notary.errors import EncodingError, SignatureError, VerificationError

__all__ = [
    "FRESHNESS_TYPE",
    "MAX_LEAF_BYTES",
    "MAX_OBSERVATIONS",
    "Statement",
    "observation_digest",
    "leaf_bytes",
    "sign_statement",
    "freshness_proof",
    "stamp_batch",
    "verify_answer",
    "open_answer",
]

FRESHNESS_TYPE = "application/vnd.parallax.freshness+json; version=1"
#: A leaf names at most this many observations (one per probed address).
MAX_OBSERVATIONS = 16
MAX_LEAF_BYTES = 4096
_PLAIN = re.compile(r"[A-Za-z0-9_-]*")

VerifyFn = Callable[[Any, VerifyKey, str], Verified]
ParseFn = Callable[[Verified], Observation]


def _parse_observation(v: Verified) -> Observation:
    return Observation.from_payload(v.payload)


_HEX32 = re.compile("[0-9a-f]{64}")
_HEX32_LIST = re.compile('[0-9a-f]{64}(?:","[0-9a-f]{64})*')


def _is_hex32(text: Any) -> bool:
    return isinstance(text, str) and _HEX32.fullmatch(text) is not None


def observation_digest(payload: bytes) -> str:
    """Hex SHA-256 of an observation's exact signed payload bytes."""
    return hashlib.sha256(payload).hexdigest()


def leaf_bytes(nonce: str, digests: Sequence[str], source: str) -> bytes:
    """The canonical (RFC 8785) bytes of one freshness leaf.

    Hot path (every answer): when the nonce is a protocol nonce
    (``[A-Za-z0-9_-]``, nothing to escape) and the digests are lower-case hex,
    the canonical text is written out directly; it is byte-identical to
    :func:`canonical.encode` of the same object (tests check both ways).
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}")
    inner = '","'.join(digests)
    count = len(digests)
    # One regex checks them all; the length check makes sure each item is one digest (an item
    # holding '","' between two digests would otherwise pass as two).  A cached round's digests
    # come again and again: the last list that passed is remembered (by its text and length).
    if inner == _LAST_DIGESTS[0] and count == _LAST_DIGESTS[1] or (
            len(inner) == 67 * count - 3 and _HEX32_LIST.fullmatch(inner) and _remember_digests(inner, count)):
        if _PLAIN.fullmatch(nonce):
            return f'{{"nonce":"{nonce}","observations":["{inner}"],"source":"{source}"}}'.encode("ascii")
    return canonical.encode({"nonce": nonce, "observations": list(digests), "source": source})


#: The text and count of the last digest list :func:`leaf_bytes` found to be lower-case hex digests.
_LAST_DIGESTS: list[Any] = ["", -1]


def _remember_digests(inner: str, count: int) -> bool:
    _LAST_DIGESTS[:] = [inner, count]
    return True


@dataclass(frozen=True, slots=True)
class Statement:
    """A signed freshness statement: ``notary`` vouched for ``tree_size`` leaves under ``root`` at ``signed_at``."""

    notary: str
    signed_at: int
    tree_size: int
    root: str

    def to_payload(self) -> dict[str, Any]:
        return {"notary": self.notary, "signed_at": self.signed_at, "tree_size": self.tree_size, "root": self.root}

    @classmethod
    def from_payload(cls, d: Mapping[str, Any]) -> "Statement":
        """Parse a *verified* statement payload strictly."""
        try:
            notary, signed_at, size, root = d["notary"], d["signed_at"], d["tree_size"], d["root"]
        except (KeyError, TypeError):
            raise VerificationError("malformed freshness statement: a member is missing") from None
        if not isinstance(notary, str) or type(signed_at) is not int or type(size) is not int:
            raise VerificationError("malformed freshness statement: a member has the wrong type")
        if not 1 <= size <= merkle.MAX_TREE_SIZE or not _is_hex32(root):
            raise VerificationError("malformed freshness statement: bad tree size or root")
        return cls(notary, signed_at, size, root)


def sign_statement(key: SigningKey, signed_at: int, root: bytes, tree_size: int) -> dict[str, Any]:
    """Sign the freshness statement for a tree of ``tree_size`` leaves with ``root``; returns the DSSE envelope."""
    if type(signed_at) is int and type(tree_size) is int and 0 <= signed_at <= canonical.MAX_SAFE_INT \
            and 0 <= tree_size <= canonical.MAX_SAFE_INT and _KEY_ID.fullmatch(key.key_id) and len(root) == 32:
        # Hot path (every batch): the canonical text written out directly (members in RFC 8785
        # order, nothing to escape); byte-identical to canonical.encode (tests check it).
        payload = (f'{{"notary":"{key.key_id}","root":"{root.hex()}","signed_at":{signed_at},'
                   f'"tree_size":{tree_size}}}').encode("ascii")
    else:
        payload = canonical.encode(Statement(key.key_id, signed_at, tree_size, root.hex()).to_payload())
    return sign_envelope(FRESHNESS_TYPE, payload, key)


_KEY_ID = re.compile("ed25519:[0-9a-f]{64}")


def freshness_proof(statement: Mapping[str, Any], leaf: bytes, index: int, path: Sequence[bytes]) -> dict[str, Any]:
    """The ``freshness`` member of one answer: the shared statement, this leaf, its index and path."""
    return {
        "statement": statement,
        "leaf": base64.b64encode(leaf).decode("ascii"),
        "index": index,
        "path": [h.hex() for h in path],
    }


def stamp_batch(key: SigningKey, signed_at: int, leaves: Sequence[bytes]) -> list[dict[str, Any]]:
    """Sign one statement over ``leaves`` (leaf bytes) and return each leaf's ``freshness`` member."""
    root, paths = merkle.tree_paths([merkle.leaf_hash(leaf) for leaf in leaves])
    statement = sign_statement(key, signed_at, root, len(leaves))
    return [freshness_proof(statement, leaf, i, p) for i, (leaf, p) in enumerate(zip(leaves, paths))]


def _parse_leaf(raw: bytes) -> tuple[str, list[str], str]:
    try:
        d = canonical.decode(raw, max_bytes=MAX_LEAF_BYTES)
    except EncodingError as exc:
        raise VerificationError(f"freshness leaf is not valid JSON: {exc}") from None
    if not isinstance(d, dict) or set(d) != {"nonce", "observations", "source"}:
        raise VerificationError("freshness leaf must hold exactly nonce, observations and source")
    nonce, obs, source = d["nonce"], d["observations"], d["source"]
    if not isinstance(nonce, str) or source not in SOURCES or not isinstance(obs, list):
        raise VerificationError("freshness leaf has a member of the wrong type")
    if not 1 <= len(obs) <= MAX_OBSERVATIONS or not all(_is_hex32(x) for x in obs):
        raise VerificationError("freshness leaf must name 1 to 16 observation digests")
    return nonce, obs, source


def _authentic(verify: VerifyFn, env: Any, key: VerifyKey, payload_type: str) -> Verified:
    try:
        return verify(env, key, payload_type)
    except SignatureError:
        raise
    except VerificationError as exc:
        raise SignatureError(str(exc)) from None


def verify_answer(
    envelopes: Sequence[Any],
    freshness: Any,
    key: VerifyKey,
    *,
    nonce: str,
    verify: VerifyFn = verify_envelope,
    parse: ParseFn = _parse_observation,
) -> list[Observation]:
    """Verify one target's answer (observation envelopes plus ``freshness``) from the notary ``key``.

    Returns the observations with ``nonce``, ``signed_at``, ``source`` and
    ``age`` taken from the verified freshness statement and leaf; the leaf's
    nonce must be ``nonce``.  ``verify`` is
    :func:`~notary.core.envelope.verify_envelope` or a caching equivalent with
    the same contract.  Raises :class:`~notary.errors.SignatureError` when a
    signature or the Merkle path fails (nothing was parsed), and
    :class:`VerificationError` for anything else.  ``parse`` turns a verified
    observation envelope into an :class:`Observation` (a caller may memoise it).
    """
    return _open(envelopes, freshness, key, nonce, verify, parse)


def open_answer(envelopes: Sequence[Any], freshness: Any, key: VerifyKey, *, verify: VerifyFn = verify_envelope) -> list[Observation]:
    """Every check of :func:`verify_answer` except the nonce: the observations carry the leaf's nonce.

    For auditors and tests that inspect a recorded answer.  A client checking
    its own request MUST use :func:`verify_answer` with its nonce.
    """
    return _open(envelopes, freshness, key, None, verify, _parse_observation)


def _open(envelopes: Sequence[Any], freshness: Any, key: VerifyKey, nonce: str | None, verify: VerifyFn,
          parse: ParseFn) -> list[Observation]:
    if not isinstance(envelopes, (list, tuple)) or not 1 <= len(envelopes) <= MAX_OBSERVATIONS:
        raise VerificationError("an answer holds 1 to 16 observation envelopes")
    verified = [_authentic(verify, env, key, OBSERVATION_TYPE) for env in envelopes]
    digests = [v.digest or observation_digest(v.payload_bytes) for v in verified]
    if type(freshness) is not dict and not isinstance(freshness, Mapping):  # exact type first: decoded JSON
        raise SignatureError("freshness proof missing")
    st_env = _authentic(verify, freshness.get("statement"), key, FRESHNESS_TYPE)
    st = Statement.from_payload(st_env.payload)
    if st.notary != key.key_id:
        raise VerificationError("freshness statement names another notary")
    index, path = freshness.get("index"), freshness.get("path")
    if type(index) is not int or not isinstance(path, list) or len(path) > merkle.MAX_PATH:
        raise SignatureError("freshness proof has a bad index or path")
    if not all(_is_hex32(p) for p in path):
        raise SignatureError("freshness path entries are 64 hex characters")
    leaf_b64 = freshness.get("leaf")
    if not isinstance(leaf_b64, str) or len(leaf_b64) > MAX_LEAF_BYTES * 2:
        raise SignatureError("freshness leaf missing or too large")
    try:
        leaf = canonical.b64decode_strict(leaf_b64)
    except EncodingError:
        raise SignatureError("freshness leaf is not valid canonical base64") from None
    got = merkle.root_from_path(index, st.tree_size, merkle.leaf_hash(leaf), [bytes.fromhex(p) for p in path])
    if got is None or got.hex() != st.root:
        raise SignatureError("freshness leaf is not under the signed root (wrong path, index or leaf)")
    # Only now, with the leaf authenticated by the signed root, is it read: either it is, byte
    # for byte, the canonical leaf of this request's nonce and the digests received (so parsing
    # it would give exactly those: the usual case, nothing to parse), or it is parsed and
    # compared member by member.
    source = _expected_source(leaf, nonce, digests)
    if source is not None:
        assert nonce is not None
        leaf_nonce = nonce
    else:
        leaf_nonce, leaf_digests, source = _parse_leaf(leaf)
        if nonce is not None and leaf_nonce != nonce:
            raise VerificationError("nonce does not match this request (replayed answer?)")
        if leaf_digests != digests:
            raise VerificationError("freshness leaf names other observations than the ones received")
    out = []
    for v in verified:
        obs = parse(v)
        if obs.notary != key.key_id:
            raise VerificationError("observation names another notary than its signer")
        out.append(obs.bound(leaf_nonce, st.signed_at, source))
    return out


_SOURCE_ENDINGS = tuple((f'"source":"{s}"}}'.encode("ascii"), s) for s in SOURCES)


def _expected_source(leaf: bytes, nonce: str | None, digests: list[str]) -> str | None:
    """The source of ``leaf`` when it is exactly :func:`leaf_bytes` of ``nonce`` and ``digests``, else None."""
    if nonce is None:
        return None
    for ending, source in _SOURCE_ENDINGS:
        if leaf.endswith(ending):
            try:
                return source if leaf == leaf_bytes(nonce, digests, source) else None
            except (EncodingError, ValueError):  # a nonce canonical JSON cannot hold: compared after parsing
                return None
    return None
