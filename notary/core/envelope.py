"""DSSE envelopes signed with Ed25519.

Theory of operation
-------------------
Every signed object in Parallax (an observation, a notary identity document, a
bundle) travels as a DSSE envelope (https://github.com/secure-systems-lab/dsse)::

    {"payloadType": "<type>", "payload": "<base64 of the payload bytes>",
     "signatures": [{"keyid": "ed25519:<hex sha256 of public key>", "sig": "<base64>"}]}

The signature is Ed25519 over the DSSE pre-authentication encoding (PAE)::

    PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body

where ``LEN`` is the byte length as ASCII decimal with no leading zeros and SP
is one 0x20 byte.  ``body`` is the exact payload bytes (RFC 8785 canonical JSON);
``type`` is the UTF-8 payload type.  Verification decodes the base64 payload,
checks the signature over PAE of *those exact bytes*, and only then parses the
JSON.  Nothing is re-serialised to verify.  The envelope itself is emitted as
RFC 8785 JSON too, so that envelopes are byte-stable (golden vectors).

Limits: an envelope is at most :data:`MAX_ENVELOPE_BYTES`; at most
:data:`MAX_SIGNATURES` signatures are looked at.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any

from notary.core import canonical
from notary.core.keys import SigningKey, VerifyKey
from notary.errors import EncodingError, VerificationError

__all__ = [
    "pae",
    "sign_envelope",
    "verify_envelope",
    "envelope_bytes",
    "Verified",
    "MAX_ENVELOPE_BYTES",
    "MAX_SIGNATURES",
]

MAX_ENVELOPE_BYTES = 512 * 1024
MAX_SIGNATURES = 4


def pae(payload_type: str, payload: bytes) -> bytes:
    """The DSSE v1 pre-authentication encoding: the exact bytes that are signed."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(t), t, len(payload), payload)


def sign_envelope(payload_type: str, payload: bytes, key: SigningKey) -> dict[str, Any]:
    """Sign ``payload`` bytes under ``payload_type``; return the envelope as a dict."""
    sig = key.sign(pae(payload_type, payload))
    return {
        "payloadType": payload_type,
        "payload": base64.b64encode(payload).decode("ascii"),
        "signatures": [{"keyid": key.key_id, "sig": base64.b64encode(sig).decode("ascii")}],
    }


def envelope_bytes(envelope: Mapping[str, Any]) -> bytes:
    """Canonical bytes of an envelope dict (for storage, vectors and the wire)."""
    return canonical.encode(dict(envelope))


@dataclass(frozen=True, slots=True)
class Verified:
    """The result of a successful verification: who signed what, and the parsed payload.

    ``digest`` is the lower-case hex SHA-256 of ``payload_bytes`` when the verifier
    already holds it (a cache of verified envelopes, e.g. :func:`client.verify.verify_cached`),
    else ``None``: :func:`verify_envelope` leaves it ``None``.
    """

    key_id: str
    payload_type: str
    payload_bytes: bytes
    payload: Any
    digest: str | None = None


def _b64(text: Any, what: str) -> bytes:
    """Strict, canonical base64 (non-zero padding bits are refused: no malleability)."""
    if not isinstance(text, str):
        raise VerificationError(f"{what} is not a string")
    try:
        return canonical.b64decode_strict(text)
    except EncodingError:
        raise VerificationError(f"{what} is not valid canonical base64") from None


def verify_envelope(
    envelope: bytes | str | Mapping[str, Any],
    keys: Mapping[str, VerifyKey] | VerifyKey,
    payload_type: str,
    *,
    max_payload_bytes: int = MAX_ENVELOPE_BYTES,
) -> Verified:
    """Verify a DSSE envelope against trusted ``keys`` and return its parsed payload.

    ``keys`` maps key id to key (or is one key).  ``payload_type`` must match
    exactly.  The signature is checked over the exact decoded payload bytes
    *before* the payload is parsed; the payload is then parsed as strict JSON and
    must be an object.  Raises :class:`VerificationError` on any failure.
    """
    if isinstance(keys, VerifyKey):
        keys = {keys.key_id: keys}
    if isinstance(envelope, (bytes, str)):
        raw = envelope.encode("utf-8") if isinstance(envelope, str) else envelope
        if len(raw) > MAX_ENVELOPE_BYTES:
            raise VerificationError("envelope too large")
        try:
            envelope = canonical.decode(raw, max_bytes=MAX_ENVELOPE_BYTES)
        except EncodingError as exc:
            raise VerificationError(f"envelope is not valid JSON: {exc}") from None
    if type(envelope) is not dict and not isinstance(envelope, Mapping):  # exact type first: decoded JSON
        raise VerificationError("envelope is not a JSON object")
    ptype = envelope.get("payloadType")
    if not isinstance(ptype, str):
        raise VerificationError("payloadType missing")
    if ptype != payload_type:
        raise VerificationError(f"unexpected payloadType {ptype!r}")
    payload = _b64(envelope.get("payload"), "payload")
    if len(payload) > max_payload_bytes:
        raise VerificationError("payload too large")
    sigs = envelope.get("signatures")
    if not isinstance(sigs, list) or not sigs:
        raise VerificationError("no signatures")
    message = pae(ptype, payload)
    signer: str | None = None
    for entry in sigs[:MAX_SIGNATURES]:
        if type(entry) is not dict and not isinstance(entry, Mapping):
            continue
        kid = entry.get("keyid")
        key = keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            continue
        try:
            sig = _b64(entry.get("sig"), "signature")
        except VerificationError:
            continue
        if key.verify(message, sig):
            signer = key.key_id
            break
    if signer is None:
        raise VerificationError("no valid signature by a trusted key")
    # Only now, with authenticity established, is the payload parsed.
    try:
        parsed = canonical.decode(payload, max_bytes=max_payload_bytes)
    except EncodingError as exc:
        raise VerificationError(f"signed payload is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise VerificationError("signed payload is not a JSON object")
    return Verified(key_id=signer, payload_type=ptype, payload_bytes=payload, payload=parsed)
