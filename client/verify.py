"""Checking a notary's answer before anything in it counts (pure: ``now`` is passed in).

For each envelope a notary returned, in this order:

1. the DSSE signature verifies against the notary's bundle key, over the exact
   payload bytes (else ``bad_signature``); only then is the payload parsed;
2. the payload is a well-formed observation naming that notary (else ``invalid``);
3. the nonce is this call's fresh nonce (else ``invalid``: replayed);
4. the target (host, port and SNI) is the one asked for (else ``invalid``); the
   SNI asked for defaults to the host's own (none for an IP literal), exactly
   as :meth:`~notary.core.Target.parse` derives it, so an observation made with
   another SNI (another virtual host) never counts;
5. ``signed_at`` is within ``policy.max_skew`` of ``now`` (else ``stale``);
6. ``observed_at`` is at most ``policy.max_age`` old and not after ``signed_at``,
   (else ``stale``/``invalid``).  A negative ``age`` is refused when the payload
   is parsed (step 2, :meth:`~notary.core.Observation.from_payload`).

One bad envelope rejects the notary's whole answer: a notary either answers
correctly or does not count.  If an identity document was fetched, it must
verify against the same key, match the bundle entry's name and region, and be
fresh: ``signed_at`` at most :data:`IDENTITY_MAX_AGE` seconds old and not more
than the allowed skew in the future (else ``excluded``).  A notary signs its
identity afresh for every request (at most once a second), so only a replay
(e.g. by a relay undoing a gateway key rotation) is ever that old.
"""

from __future__ import annotations

from typing import Any, Sequence

from notary.core import OBSERVATION_TYPE, Observation, Target, verify_envelope, verify_identity
from notary.errors import InputError, VerificationError
from client.bundle import BundleEntry
from client.policy import Policy
from client.verdict import Evidence

__all__ = ["check_answer", "check_identity", "MAX_ENVELOPES", "IDENTITY_MAX_AGE", "IDENTITY_MAX_SKEW"]

MAX_ENVELOPES = 16
#: Seconds an identity document may be old (its ``signed_at``).  A notary re-signs its identity
#: for every request (cached for one second, notary.server), and a client keeps the gateway
#: keys it lists for 600 s (client.ohttp.KEYS_TTL): one hour is far above both.
IDENTITY_MAX_AGE = 3600
#: Seconds an identity document's ``signed_at`` may lie in the future (clock skew).
IDENTITY_MAX_SKEW = 300


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
    nonce: str,
    host: str,
    port: int,
    now: int,
    policy: Policy,
    identity: Any = None,
    sni: str | None | object = ...,
) -> Evidence:
    """Verify one notary's envelopes for one target; return its :class:`Evidence`.

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
    key = entry.verify_key
    out: list[Observation] = []
    for env in envelopes:
        try:
            verified = verify_envelope(env, key, OBSERVATION_TYPE)
        except VerificationError as exc:
            return _fail(entry, "bad_signature", f"rejected: {exc}")
        try:
            obs = Observation.from_payload(verified.payload)
        except VerificationError as exc:
            return _fail(entry, "invalid", str(exc))
        if obs.notary != entry.key_id:
            return _fail(entry, "invalid", "observation names another notary")
        if obs.nonce != nonce:
            return _fail(entry, "invalid", "nonce does not match this request (replayed answer?)")
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
        out.append(obs)
    return Evidence(entry.name, entry.region, entry.key_id, entry.url, observations=tuple(out))
