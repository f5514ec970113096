"""The observation: what one notary saw when it connected to one target.

A :class:`ProbeResult` is the raw, unsigned fact of one probe (it is what the
store keeps).  An :class:`Observation` is a probe result bound to a notary key
and the key history of the target; it is signed once, when the probe round is
made, as a DSSE envelope with payload type :data:`OBSERVATION_TYPE` (protocol
version 2).  A client's nonce and the signing time are bound to it by a
separate freshness statement (:mod:`notary.core.freshness`).
``docs/protocol.md`` documents every field.

All times are integer unix seconds (UTC).  Hashes are lower-case hex.  The
chain is standard base64 of DER, leaf first, at most :data:`MAX_CHAIN_CERTS`
certificates and :data:`MAX_CHAIN_BYTES` bytes of DER in total.
"""

from __future__ import annotations

import base64
import binascii
import functools
from dataclasses import dataclass, field
from typing import Any, Mapping

from notary.core import canonical
from notary.core.envelope import sign_envelope, verify_envelope
from notary.core.keys import SigningKey, VerifyKey
from notary.core.pins import LeafSummary, leaf_sha256, pin_from_spki_hex, spki_sha256, summarize_leaf
from notary.core.target import Target
from notary.errors import EncodingError, InputError, VerificationError

__all__ = [
    "OBSERVATION_TYPE",
    "STATUSES",
    "ERROR_STATUSES",
    "MAX_CHAIN_CERTS",
    "MAX_CHAIN_BYTES",
    "MAX_HISTORY",
    "KeySighting",
    "ProbeResult",
    "Observation",
    "sign_observation",
    "verify_observation",
]

OBSERVATION_TYPE = "application/vnd.parallax.observation+json; version=2"

#: Every status an observation can carry.  Only ``ok`` carries a certificate.
STATUSES = (
    "ok",
    "dns_failed",
    "refused",
    "timeout",
    "reset",
    "unreachable",
    "tls_failed",
    "not_tls",
    "chain_too_large",
    "blocked_by_policy",
    "busy",
    "answer_too_large",
)
ERROR_STATUSES = frozenset(STATUSES[1:])
SOURCES = ("fresh", "cached")
MAX_CHAIN_CERTS = 10
MAX_CHAIN_BYTES = 64 * 1024
MAX_HISTORY = 32
MAX_DETAIL = 200


@dataclass(frozen=True, slots=True)
class KeySighting:
    """One distinct key (SPKI SHA-256) seen for a target, and when: first and last unix seconds."""

    spki_sha256: str
    first_seen: int
    last_seen: int

    def to_json(self) -> dict[str, Any]:
        return {"spki_sha256": self.spki_sha256, "first_seen": self.first_seen, "last_seen": self.last_seen}


@functools.lru_cache(maxsize=1024)
def _leaf_facts(der: bytes) -> tuple[str, LeafSummary]:
    """SPKI hash and summary of a leaf, memoised: re-probes and cache reads see the same leaves."""
    return spki_sha256(der), summarize_leaf(der)


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The raw result of one probe of one address.  ``chain`` is DER, leaf first."""

    target: Target
    ip: str | None
    status: str
    observed_at: int
    detail: str | None = None
    tls_version: str | None = None
    chain: tuple[bytes, ...] = ()
    spki_sha256: str | None = field(default=None)
    leaf_sha256: str | None = field(default=None)
    leaf: LeafSummary | None = field(default=None)

    @classmethod
    def success(
        cls, target: Target, ip: str, observed_at: int, tls_version: str, chain: tuple[bytes, ...]
    ) -> "ProbeResult":
        """A successful probe.  A chain that is too long or too big becomes ``chain_too_large``."""
        if not chain:
            return cls.failure(target, ip, observed_at, "tls_failed", "server presented no certificate")
        if len(chain) > MAX_CHAIN_CERTS or sum(map(len, chain)) > MAX_CHAIN_BYTES:
            return cls.failure(
                target, ip, observed_at, "chain_too_large",
                f"{len(chain)} certificates, {sum(map(len, chain))} bytes",
            )
        try:
            spki, summary = _leaf_facts(chain[0])
        except InputError:
            return cls.failure(target, ip, observed_at, "tls_failed", "leaf certificate is not parseable")
        return cls(
            target=target, ip=ip, status="ok", observed_at=observed_at, tls_version=tls_version,
            chain=chain, spki_sha256=spki, leaf_sha256=leaf_sha256(chain[0]), leaf=summary,
        )

    @classmethod
    def failure(
        cls, target: Target, ip: str | None, observed_at: int, status: str, detail: str
    ) -> "ProbeResult":
        if status not in ERROR_STATUSES:
            raise ValueError(f"not an error status: {status}")
        return cls(target=target, ip=ip, status=status, observed_at=observed_at, detail=detail[:MAX_DETAIL])

    # -- storage form (unsigned canonical JSON) ---------------------------------
    def to_record(self, *, with_chain: bool = True) -> bytes:
        """The storage record; ``with_chain=False``: the same record with ``"chain": []``
        (the store keeps chains apart, see :func:`chain_record`)."""
        return canonical.encode(
            {
                "target": self.target.to_json(),
                "ip": self.ip,
                "status": self.status,
                "observed_at": self.observed_at,
                "detail": self.detail,
                "tls_version": self.tls_version,
                "chain": self.chain_record() if with_chain else [],
            }
        )

    def chain_record(self) -> list[str]:
        """The chain as the record holds it: base64 DER certificates, leaf first."""
        return [base64.b64encode(c).decode("ascii") for c in self.chain]

    @classmethod
    def from_record(cls, data: bytes) -> "ProbeResult":
        d = canonical.decode(data)
        t = d["target"]
        target = Target(t["host"], t["port"], t["sni"])
        if d["status"] == "ok":
            chain = tuple(base64.b64decode(c) for c in d["chain"])
            return cls.success(target, d["ip"], d["observed_at"], d["tls_version"], chain)
        return cls.failure(target, d["ip"], d["observed_at"], d["status"], d["detail"] or "")


@dataclass(frozen=True, slots=True)
class Observation:
    """What notary ``notary`` (a key id) saw of ``target``.  See docs/protocol.md, section 6.

    The signed payload (:meth:`to_payload`) is the stable part, signed once when
    the probe round is made.  ``nonce``, ``signed_at``, ``source`` and ``age``
    are not in it: they come from the verified freshness statement and leaf of
    the answer that carried it (:func:`notary.core.freshness.verify_answer`) and
    are empty/zero on an observation parsed alone.
    """

    notary: str
    target: Target
    ip: str | None
    observed_at: int
    status: str
    detail: str | None
    tls_version: str | None
    leaf_sha256: str | None
    spki_sha256: str | None
    chain: tuple[bytes, ...]
    leaf: LeafSummary | None
    key_history: tuple[KeySighting, ...] = ()
    nonce: str = ""
    signed_at: int = 0
    source: str = ""
    age: int = 0

    @property
    def pin(self) -> str | None:
        return pin_from_spki_hex(self.spki_sha256) if self.spki_sha256 else None

    @classmethod
    def from_probe(
        cls,
        probe: ProbeResult,
        *,
        notary: str,
        key_history: tuple[KeySighting, ...] = (),
    ) -> "Observation":
        return cls(
            notary=notary, target=probe.target, ip=probe.ip,
            observed_at=probe.observed_at, status=probe.status,
            detail=probe.detail, tls_version=probe.tls_version, leaf_sha256=probe.leaf_sha256,
            spki_sha256=probe.spki_sha256, chain=probe.chain, leaf=probe.leaf,
            key_history=key_history[:MAX_HISTORY],
        )

    def bound(self, nonce: str, signed_at: int, source: str) -> "Observation":
        """This observation as vouched for by a freshness statement signed at ``signed_at`` (unix
        seconds) for ``nonce`` (``source``: fresh or cached); ``age`` is ``signed_at - observed_at``,
        at least 0.  Equal to ``dataclasses.replace`` of the four fields (built directly: every answer)."""
        return Observation(self.notary, self.target, self.ip, self.observed_at, self.status, self.detail,
                           self.tls_version, self.leaf_sha256, self.spki_sha256, self.chain, self.leaf,
                           self.key_history, nonce, signed_at, source, max(0, signed_at - self.observed_at))

    def to_payload(self) -> dict[str, Any]:
        """The JSON object that is signed (canonicalised by RFC 8785)."""
        return {
            "notary": self.notary,
            "target": self.target.to_json(),
            "ip": self.ip,
            "observed_at": self.observed_at,
            "status": self.status,
            "detail": self.detail,
            "tls_version": self.tls_version,
            "leaf_sha256": self.leaf_sha256,
            "spki_sha256": self.spki_sha256,
            "pin": self.pin,
            "chain": [base64.b64encode(c).decode("ascii") for c in self.chain],
            "leaf": self.leaf.to_json() if self.leaf else None,
            "key_history": [k.to_json() for k in self.key_history],
        }

    @classmethod
    def from_payload(cls, d: Mapping[str, Any]) -> "Observation":
        """Parse a *verified* payload strictly; raise :class:`VerificationError` on a bad shape."""
        try:
            return _parse(d)
        except (KeyError, TypeError, ValueError, InputError, EncodingError, binascii.Error) as exc:
            raise VerificationError(f"malformed observation: {exc}") from None


def _req(d: Mapping[str, Any], key: str, typ: type | tuple[type, ...], nullable: bool = False) -> Any:
    value = d[key]
    if value is None and nullable:
        return None
    if isinstance(value, bool) and typ is int or not isinstance(value, typ):
        raise TypeError(f"field {key!r} has the wrong type")
    return value


def _parse(d: Mapping[str, Any]) -> Observation:
    t = _req(d, "target", dict)
    target = Target(_req(t, "host", str), _req(t, "port", int), _req(t, "sni", str, True))
    status = _req(d, "status", str)
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")
    chain_b64 = _req(d, "chain", list)
    if len(chain_b64) > MAX_CHAIN_CERTS:
        raise ValueError("chain too long")
    chain = tuple(canonical.b64decode_strict(_req({"c": c}, "c", str)) for c in chain_b64)
    if sum(map(len, chain)) > MAX_CHAIN_BYTES:
        raise ValueError("chain too large")
    history = []
    for h in _req(d, "key_history", list)[:MAX_HISTORY]:
        history.append(
            KeySighting(_req(h, "spki_sha256", str), _req(h, "first_seen", int), _req(h, "last_seen", int))
        )
    leaf = d["leaf"]
    spki = _req(d, "spki_sha256", str, True)
    leaf_hash = _req(d, "leaf_sha256", str, True)
    pin = _req(d, "pin", str, True)
    if status == "ok":
        if not (spki and chain and leaf_hash):
            raise ValueError("an ok observation carries a key and a chain")
        if _leaf_facts(chain[0])[0] != spki:
            raise ValueError("spki_sha256 does not match the leaf certificate")
        if leaf_sha256(chain[0]) != leaf_hash:
            raise ValueError("leaf_sha256 does not match the leaf certificate")
        if pin != pin_from_spki_hex(spki):
            raise ValueError("pin does not match spki_sha256")
    elif chain or spki is not None or pin is not None or leaf_hash is not None or leaf is not None:
        raise ValueError(f"a {status!r} observation carries no certificate, key, pin or leaf")
    return Observation(
        notary=_req(d, "notary", str),
        target=target,
        ip=_req(d, "ip", str, True),
        observed_at=_req(d, "observed_at", int),
        status=status,
        detail=_req(d, "detail", str, True),
        tls_version=_req(d, "tls_version", str, True),
        leaf_sha256=leaf_hash,
        spki_sha256=spki,
        chain=chain,
        leaf=LeafSummary.from_json(leaf) if leaf is not None else None,
        key_history=tuple(history),
    )


def sign_observation(obs: Observation, key: SigningKey) -> dict[str, Any]:
    """Sign ``obs`` with ``key``: a DSSE envelope over the RFC 8785 bytes of :meth:`Observation.to_payload`."""
    if obs.notary != key.key_id:
        raise ValueError("observation names a different notary key")
    return sign_envelope(OBSERVATION_TYPE, canonical.encode(obs.to_payload()), key)


def verify_observation(envelope: Any, key: VerifyKey) -> Observation:
    """Verify ``envelope`` against ``key``, then parse it.  The payload must name ``key`` as its notary.

    This checks one observation alone (no nonce, no signing time): a client
    checks an answer with :func:`notary.core.freshness.verify_answer`.
    """
    verified = verify_envelope(envelope, key, OBSERVATION_TYPE)
    obs = Observation.from_payload(verified.payload)
    if obs.notary != key.key_id:
        raise VerificationError("observation names a different notary than its signer")
    return obs
