"""The verdict engine's data types (:mod:`client.verdict`): what goes in and what comes out.

In: :class:`ClientView` (what the client itself saw) and one :class:`Evidence` per notary
asked (verified observations, or the reason there are none).  Out: one :class:`NotaryResult`
per notary and the :class:`Verdict`, a status plus its evidence, each JSON-serialisable with
``to_json``.  :data:`STATUSES` are the verdict statuses, :data:`RESULTS` the per-notary
results and :data:`ACCEPTING` the statuses that accept the client's key.  Keys are SPKI
SHA-256 digests in hex, shown as ``sha256/`` pins; times (``checked_at``) are unix seconds
and ``age`` is seconds.  Pure: no I/O, no clock.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from notary.core import Observation, pin_from_spki_hex
from client.evidence import InterceptionNote, MemoryNote, VantageResult

__all__ = ["ClientView", "Evidence", "NotaryResult", "Verdict", "STATUSES", "RESULTS", "ACCEPTING", "outcome_class"]

STATUSES = ("consistent", "consistent_with_outliers", "mitm_suspected", "split_view", "insufficient", "unreachable",
            "intercepted_as_expected", "key_changed", "pin_mismatch")
RESULTS = ("agrees", "disagrees", "unreachable", "bad_signature", "invalid", "stale", "excluded", "not_waited")
ACCEPTING = frozenset({"consistent", "consistent_with_outliers"})
#: ``sha256/`` pins of SPKI hashes (hex), memoised: each check shows the same few keys many times.
_pin = functools.lru_cache(maxsize=1024)(pin_from_spki_hex)


def outcome_class(status: str) -> str:
    """The part of a status an early decision must not change: accept / mitm / other."""
    if status in ACCEPTING:
        return "accept"
    return "mitm" if status == "mitm_suspected" else "other"


@dataclass(frozen=True, slots=True)
class ClientView:
    """What the client saw: ``status`` is ``ok`` or a probe error status."""

    status: str
    spki_sha256: str | None = None
    ip: str | None = None
    detail: str | None = None
    source: str = "probe"  # probe | supplied
    #: SPKI SHA-256 (hex) of the leaf key and of every key shown to have signed the leaf's chain
    #: (signatures checked by client.interception); used to match a declared interceptor.
    proven_keys: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status, "spki_sha256": self.spki_sha256,
            "pin": _pin(self.spki_sha256) if self.spki_sha256 else None,
            "ip": self.ip, "detail": self.detail, "source": self.source,
            "proven_pins": [_pin(k) for k in self.proven_keys],
        }


@dataclass(frozen=True, slots=True)
class Evidence:
    """What one notary asked contributed: verified observations, or why there are none."""

    name: str
    region: str | None
    key_id: str
    url: str | None = None
    observations: tuple[Observation, ...] = ()
    failure: str | None = None  # one of RESULTS other than agrees/disagrees
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class NotaryResult:
    name: str
    region: str | None
    key_id: str
    result: str
    reason: str
    counted: bool = False
    pins: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    age: int | None = None
    source: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "region": self.region, "key_id": self.key_id, "result": self.result,
            "reason": self.reason, "counted": self.counted, "pins": list(self.pins), "ips": list(self.ips),
            "age": self.age, "source": self.source,
        }


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer to "is the key I see the one everybody else sees?".  JSON-serialisable via :meth:`to_json`."""

    status: str
    host: str
    port: int
    client: ClientView
    quorum_pins: tuple[str, ...]
    agreeing: int
    asked: int
    required: int
    regions_agreeing: tuple[str, ...]
    results: tuple[NotaryResult, ...]
    summary: str
    policy: str
    checked_at: int
    complete: bool = True
    outliers: tuple[str, ...] = field(default=())
    #: The Oblivious HTTP relays the notaries were asked through (names or URLs), in
    #: order of use; empty when asked directly.  Listed in ``to_json`` only when used.
    relays: tuple[str, ...] = field(default=())
    #: With a relay: the notaries that saw the client's address anyway (their identity
    #: document was fetched directly, since a third-party relay forwards only encrypted requests).
    address_seen_by: tuple[str, ...] = field(default=())
    vantages: tuple[VantageResult, ...] = ()  # SOCKS proxy vantages: unsigned
    interception: InterceptionNote | None = None  # set only when an interceptor was declared
    memory: MemoryNote | None = None  # set only when the key memory was consulted

    @property
    def count(self) -> str:
        """Agreement as "A/n" (n = notaries asked)."""
        return f"{self.agreeing}/{self.asked}"

    @property
    def ok(self) -> bool:
        """True for consistent and consistent_with_outliers."""
        return self.status in ACCEPTING

    @property
    def pin(self) -> str | None:
        """The agreed ``sha256/`` pin, only when the verdict is consistent."""
        return self.client.to_json()["pin"] if self.ok else None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": self.status, "summary": self.summary, "host": self.host, "port": self.port,
            "client": self.client.to_json(), "quorum_pins": list(self.quorum_pins),
            "count": self.count, "agreeing": self.agreeing, "asked": self.asked,
            "required": self.required, "regions_agreeing": list(self.regions_agreeing),
            "outliers": list(self.outliers), "policy": self.policy, "checked_at": self.checked_at,
            "complete": self.complete, "pin": self.pin, "results": [r.to_json() for r in self.results],
            "vantages": [v.to_json() for v in self.vantages],
            "interception": self.interception.to_json() if self.interception else None,
            "memory": self.memory.to_json() if self.memory else None,
        }
        if self.relays:
            out["relays"] = list(self.relays)
            out["address_seen_by"] = list(self.address_seen_by)
        return out
