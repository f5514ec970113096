"""The pure protocol core of Parallax.

No asyncio, aiohttp, socket or clock in here: callers pass ``now`` in.  The
notary server and the client both import this one implementation.
"""

from notary.core.addrpolicy import AddressPolicy, parse_networks, refusal_reason
from notary.core.canonical import decode as canonical_decode
from notary.core.canonical import encode as canonical_encode
from notary.core.envelope import Verified, envelope_bytes, pae, sign_envelope, verify_envelope
from notary.core.freshness import (
    FRESHNESS_TYPE,
    Statement,
    freshness_proof,
    leaf_bytes,
    observation_digest,
    open_answer,
    sign_statement,
    stamp_batch,
    verify_answer,
)
from notary.core.identity import IDENTITY_TYPE, PROTOCOL, Identity, sign_identity, verify_identity
from notary.core.keys import SigningKey, VerifyKey, key_id_for
from notary.core.observation import (
    ERROR_STATUSES,
    OBSERVATION_TYPE,
    STATUSES,
    KeySighting,
    Observation,
    ProbeResult,
    sign_observation,
    verify_observation,
)
from notary.core.pins import (
    LeafSummary,
    leaf_sha256,
    load_certificate,
    observed_spki,
    pin_from_spki_hex,
    spki_hex_from_pin,
    spki_sha256,
)
from notary.core.target import TARGET_FORMS, Target, normalize_host, split_target, validate_nonce, validate_port

__all__ = [
    "AddressPolicy", "parse_networks", "refusal_reason",
    "canonical_decode", "canonical_encode",
    "Verified", "envelope_bytes", "pae", "sign_envelope", "verify_envelope",
    "FRESHNESS_TYPE", "Statement", "freshness_proof", "leaf_bytes", "observation_digest", "open_answer", "sign_statement",
    "stamp_batch", "verify_answer",
    "IDENTITY_TYPE", "PROTOCOL", "Identity", "sign_identity", "verify_identity",
    "SigningKey", "VerifyKey", "key_id_for",
    "ERROR_STATUSES", "OBSERVATION_TYPE", "STATUSES", "KeySighting", "Observation",
    "ProbeResult", "sign_observation", "verify_observation",
    "LeafSummary", "leaf_sha256", "load_certificate", "observed_spki", "pin_from_spki_hex",
    "spki_hex_from_pin", "spki_sha256",
    "Target", "normalize_host", "validate_nonce", "validate_port",
    "TARGET_FORMS", "split_target",
]
