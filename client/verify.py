"""Checking a notary's answer before anything in it counts (pure: ``now`` is passed in).

An answer for one target is a list of observation envelopes plus a freshness
proof (protocol version 2, :mod:`notary.core.freshness`).  In this order:

1. every observation envelope's DSSE signature verifies against the notary's
   bundle key over the exact payload bytes; so does the freshness statement's;
   the freshness leaf is under the signed Merkle root (else ``bad_signature``);
   only then is anything parsed;
2. the leaf names this call's nonce (else ``invalid``: replayed) and exactly
   the digests of the envelopes received; the payloads are well-formed
   observations naming that notary (else ``invalid``);
3. the target (host, port and SNI) is the one asked for (else ``invalid``); the
   SNI asked for defaults to the host's own (none for an IP literal), exactly
   as :meth:`~notary.core.Target.parse` derives it, so an observation made with
   another SNI (another virtual host) never counts;
4. the statement's ``signed_at`` is within ``policy.max_skew`` of ``now`` (else ``stale``);
5. ``observed_at`` is at most ``policy.max_age`` old and not after ``signed_at``
   (else ``stale``/``invalid``); the age is ``signed_at - observed_at``, so never negative.

One bad envelope rejects the notary's whole answer: a notary either answers
correctly or does not count.  If an identity document was fetched, it must
verify against the same key, match the bundle entry's name and region, and be
fresh: ``signed_at`` at most :data:`IDENTITY_MAX_AGE` seconds old and not more
than the allowed skew in the future (else ``excluded``).  A notary signs its
identity afresh for every request (at most once a second), so only a replay
(e.g. by a relay undoing a gateway key rotation) is ever that old.

Observation envelopes are signed once by a notary and served unchanged while
cached, so a successful verification of one is remembered (:data:`VERIFIED_CACHE`
entries, keyed by the exact key id, payload type, payload and signatures): a
warm check verifies the small freshness statements only.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import replace
from collections.abc import Mapping
from typing import Any, Sequence

from notary.core import (
    OBSERVATION_TYPE, Observation, Target, Verified, VerifyKey, canonical_decode, observation_digest, verify_answer,
    verify_envelope, verify_identity,
)
from notary.core.canonical import b64decode_strict
from notary.core.envelope import MAX_ENVELOPE_BYTES
from notary.errors import EncodingError, InputError, SignatureError, VerificationError
from client.bundle import BundleEntry
from client.policy import Policy
from client.verdict import Evidence

__all__ = ["check_answer", "check_identity", "verify_cached", "MAX_ENVELOPES", "VERIFIED_CACHE", "PARSED_CACHE",
           "IDENTITY_MAX_AGE", "IDENTITY_MAX_SKEW"]

MAX_ENVELOPES = 16
#: Seconds an identity document may be old (its ``signed_at``).  A notary re-signs its identity
#: for every request (cached for one second, notary.server), and a client keeps the gateway
#: keys it lists for 600 s (client.ohttp.KEYS_TTL): one hour is far above both.
IDENTITY_MAX_AGE = 3600
#: Seconds an identity document's ``signed_at`` may lie in the future (clock skew).
IDENTITY_MAX_SKEW = 300
#: How many verified observation envelopes are remembered (LRU).
VERIFIED_CACHE = 65536
#: How many parsed observations are remembered (LRU; each holds its certificate chain).
PARSED_CACHE = 1024
# Digests of (key, payload type, payload text, signature entries) that verified: 32 bytes each,
# so remembering many costs little memory (tens of thousands of observations ~ a few MB).
_verified: "OrderedDict[bytes, None]" = OrderedDict()
# The most recent PARSED_CACHE of them, keyed by the exact strings themselves (key, payload text,
# signature entries: a hit compares every character), each with its verified payload bytes, so a
# warm check neither hashes nor decodes an observation it verified before (~3 KB each: a few MB).
_recent: "OrderedDict[tuple[bytes, str, tuple[tuple[str, str], ...]], Verified]" = OrderedDict()
_parsed: "OrderedDict[bytes, Observation]" = OrderedDict()


def _parse_cached(v: Verified) -> Observation:
    """Observation.from_payload, memoised by the exact verified payload bytes (a pure function of them).

    ``v.payload`` is ``None`` when :func:`verify_cached` answered from its memory
    (the payload was verified before, not parsed again): it is parsed here on a miss.
    """
    hit = _parsed.get(v.payload_bytes)
    if hit is not None:
        return hit
    payload = v.payload
    if payload is None:
        try:
            payload = canonical_decode(v.payload_bytes, max_bytes=MAX_ENVELOPE_BYTES)
        except EncodingError as exc:  # cannot happen for bytes that verified and parsed before
            raise VerificationError(f"signed payload is not valid JSON: {exc}") from None
    obs = Observation.from_payload(payload)
    _parsed[v.payload_bytes] = obs
    if len(_parsed) > PARSED_CACHE:
        _parsed.popitem(last=False)
    return obs


def _field(h: Any, text: str) -> None:
    raw = text.encode("utf-8", "surrogatepass")
    h.update(len(raw).to_bytes(8, "big"))
    h.update(raw)


def verify_cached(envelope: Any, key: VerifyKey, payload_type: str) -> Verified:
    """:func:`~notary.core.verify_envelope`, remembering successes for observation envelopes.

    A hit needs the same key, payload type, payload text and signature entries
    (the most recent :data:`PARSED_CACHE` compared in full, character by
    character, with their decoded payload bytes kept; older ones by a SHA-256
    over all of them, length-prefixed, then the payload decoded strictly
    again), so the signature it skips is one that verified before over the
    same bytes.  On a hit the returned ``payload`` is ``None`` (it is parsed,
    if needed, by the observation parser).  Failures are never cached.
    """
    if payload_type != OBSERVATION_TYPE or not (type(envelope) is dict or isinstance(envelope, Mapping)):
        return verify_envelope(envelope, key, payload_type)
    payload, sigs, ptype = envelope.get("payload"), envelope.get("signatures"), envelope.get("payloadType")
    if type(payload) is not str or ptype != payload_type or type(sigs) is not list:
        return verify_envelope(envelope, key, payload_type)
    entries = []
    for x in sigs:  # exact types, as decoded JSON has them; anything else takes the uncached path
        if type(x) is not dict or type(kid := x.get("keyid")) is not str or type(sig := x.get("sig")) is not str:
            return verify_envelope(envelope, key, payload_type)
        entries.append((kid, sig))
    exact = (key.raw, payload, tuple(entries))
    hit = _recent.get(exact)  # dict lookup: equal hash, then the strings compared in full
    if hit is not None:
        _recent.move_to_end(exact)
        return hit
    h = hashlib.sha256(key.raw)
    for text in (payload_type, payload, *(t for pair in entries for t in pair)):
        _field(h, text)
    ck = h.digest()
    if ck in _verified:
        _verified.move_to_end(ck)
        try:
            payload_bytes = b64decode_strict(payload)
        except EncodingError:  # cannot happen: it decoded when it verified
            return verify_envelope(envelope, key, payload_type)
        out = Verified(key_id=key.key_id, payload_type=payload_type, payload_bytes=payload_bytes, payload=None,
                       digest=observation_digest(payload_bytes))
    else:
        out = verify_envelope(envelope, key, payload_type)
        out = replace(out, digest=observation_digest(out.payload_bytes))
        _verified[ck] = None
        if len(_verified) > VERIFIED_CACHE:
            _verified.popitem(last=False)
    # Kept with its digest (over the very bytes that verified): a hit neither hashes nor decodes.
    _recent[exact] = replace(out, payload=None) if out.payload is not None else out
    if len(_recent) > PARSED_CACHE:
        _recent.popitem(last=False)
    return out


def _fail(entry: BundleEntry, kind: str, reason: str) -> Evidence:
    return Evidence(entry.name, entry.region, entry.key_id, entry.url, failure=kind, reason=reason)


def check_identity(entry: BundleEntry, envelope: Any, *, now: int, max_age: int = IDENTITY_MAX_AGE,
                   max_skew: int = IDENTITY_MAX_SKEW) -> str | None:
    """None when the identity document verifies, matches ``entry`` and is fresh at ``now``
    (unix seconds: signed at most ``max_age`` seconds ago, at most ``max_skew`` ahead), else the reason."""
    try:
        ident = verify_identity(envelope, entry.verify_key)
    except VerificationError as exc:
        return f"identity document invalid: {exc}"
    if ident.signed_at - now > max_skew:
        return f"identity stale: signed_at is {ident.signed_at - now}s in the future (max skew {max_skew}s)"
    if now - ident.signed_at > max_age:
        return f"identity stale: signed {now - ident.signed_at}s ago (max {max_age}s; replayed?)"
    if ident.name != entry.name:
        return f"identity name {ident.name!r} does not match the bundle ({entry.name!r})"
    if entry.region not in ("", "unknown") and ident.region != entry.region:
        return f"identity region {ident.region!r} does not match the bundle ({entry.region!r})"
    return None


def check_answer(
    entry: BundleEntry,
    envelopes: Sequence[Any],
    *,
    freshness: Any,
    nonce: str,
    host: str,
    port: int,
    now: int,
    policy: Policy,
    identity: Any = None,
    sni: str | None | object = ...,
) -> Evidence:
    """Verify one notary's answer (envelopes and freshness proof) for one target; return its :class:`Evidence`.

    ``sni`` is the SNI the caller asked for (``None``: none sent); left out, it is
    the default SNI for ``host``.  ``now`` is unix seconds.
    """
    if sni is ...:
        try:
            sni = Target.parse(host, port).sni
        except InputError as exc:
            return _fail(entry, "invalid", f"bad target: {exc}")
    if identity is not None:
        why = check_identity(entry, identity, now=now, max_skew=policy.max_skew)
        if why:
            return _fail(entry, "excluded", why)
    if not isinstance(envelopes, (list, tuple)) or not envelopes:
        return _fail(entry, "invalid", "answer holds no observation")
    if len(envelopes) > MAX_ENVELOPES:
        return _fail(entry, "invalid", f"answer holds more than {MAX_ENVELOPES} observations")
    try:
        out = verify_answer(envelopes, freshness, entry.verify_key, nonce=nonce, verify=verify_cached, parse=_parse_cached)
    except SignatureError as exc:
        return _fail(entry, "bad_signature", f"rejected: {exc}")
    except VerificationError as exc:
        return _fail(entry, "invalid", str(exc))
    for obs in out:
        if obs.target.host != host or obs.target.port != port:
            return _fail(entry, "invalid", f"observation is for {obs.target}, not {host}:{port}")
        if obs.target.sni != sni:
            return _fail(entry, "invalid", f"observation used SNI {obs.target.sni!r}, not {sni!r}")
        if abs(obs.signed_at - now) > policy.max_skew:
            return _fail(entry, "stale", f"signed_at is {obs.signed_at - now:+d}s from now (max skew {policy.max_skew}s)")
        if obs.observed_at > obs.signed_at:
            return _fail(entry, "invalid", "observed after it was signed")
        if now - obs.observed_at > policy.max_age:
            return _fail(entry, "stale", f"observation is {now - obs.observed_at}s old (max {policy.max_age}s)")
    return Evidence(entry.name, entry.region, entry.key_id, entry.url, observations=tuple(out))
