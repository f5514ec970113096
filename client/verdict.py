"""The verdict engine: a pure function from verified evidence to a verdict.

Theory of operation
-------------------
:func:`decide` takes what the client itself saw (:class:`ClientView`), one
:class:`Evidence` per notary *asked* (verified observations, or the reason
there are none), a :class:`~client.policy.Policy` and ``now``.  It does no I/O
and reads no clock.

Per notary it derives one result:

``agrees``        the client's key (SPKI) is among the keys the notary saw on
                  any address of the target (or, with weak consistency, in its
                  key history within the window);
``disagrees``     the notary observed the target and never saw the client's key;
``unreachable``   the notary, or its probe of the target, failed ("could not
                  observe" is never counted as "saw something different");
``bad_signature`` / ``invalid`` / ``stale`` / ``excluded`` / ``not_waited``
                  the answer was rejected by :mod:`client.verify`, the notary's
                  identity did not match the bundle, it duplicated another
                  notary's key, or the decision was made before it answered.

With ``n`` notaries asked, ``A`` counted agreements and ``D`` disagreements:

1. the client could not reach the target                    -> ``unreachable``
2. ``n`` below the policy's minimum                          -> ``insufficient``
3. ``A >= required(n)`` and the agreeing notaries span enough regions
   -> ``consistent`` (``consistent_with_outliers`` if ``D > 0``, naming them)
4. ``D >= required(n)`` and they span enough regions         -> ``mitm_suspected``
5. ``A`` or ``D >= required(n)`` but that side spans too few regions,
   or ``A + D < required(n)``                                -> ``insufficient``
6. otherwise (some notaries saw the client's key, some others) -> ``split_view``

Regions: a side "spans enough regions" when its notaries name at least
``policy.min_regions`` distinct regions.  A region that is ``unknown``, empty
or absent counts as no region at all, so notaries without a region can never
meet a requirement of 2 or more (a ``min_regions`` of 1 is no requirement).
The rule is never waived because the bundle has too few regions: a policy
that cannot be met gives ``insufficient``, with the summary saying why.

Every failure lowers ``A`` and ``D`` and never raises either, so an attacker who
can only silence notaries gets ``insufficient``, never ``consistent``.

Then the other evidence of a :class:`~client.evidence.CheckContext` is weighed
(:mod:`client.evidence` states those rules): SOCKS proxy vantages (unsigned;
counted only under a policy with ``proxies="count"``, and never able to silence
a notary quorum for another key), a declared interceptor (``mitm_suspected``
-> ``intercepted_as_expected``), and the keys this client remembers
(``key_changed``, ``pin_mismatch``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from notary.core import Observation, pin_from_spki_hex
from client.evidence import (
    CheckContext, InterceptionNote, MemoryNote, VantageResult, judge_proxy, match_interceptor, remember_note,
)
from client.policy import Policy

__all__ = [
    "ClientView",
    "Evidence",
    "NotaryResult",
    "Verdict",
    "decide",
    "STATUSES",
    "RESULTS",
    "ACCEPTING",
    "outcome_class",
    "judge_all",
    "conclude",
    "notary_status",
]

STATUSES = ("consistent", "consistent_with_outliers", "mitm_suspected", "split_view", "insufficient", "unreachable",
            "intercepted_as_expected", "key_changed", "pin_mismatch")
RESULTS = ("agrees", "disagrees", "unreachable", "bad_signature", "invalid", "stale", "excluded", "not_waited")
ACCEPTING = frozenset({"consistent", "consistent_with_outliers"})
_UNKNOWN_REGIONS = {"", "unknown", None}
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


def _judge(ev: Evidence, client: ClientView, policy: Policy, now: int) -> NotaryResult:
    # NotaryResult(name, region, key_id, result, reason, counted, pins, ips, age, source): built
    # positionally (every answer of every check comes through here).
    name, region, key_id = ev.name, ev.region, ev.key_id
    if ev.failure is not None:
        return NotaryResult(name, region, key_id, ev.failure, ev.reason or ev.failure)
    observations = ev.observations
    ok = [o for o in observations if o.status == "ok" and o.spki_sha256]
    ips = tuple(sorted({o.ip for o in observations if o.ip}))
    age = min((o.age for o in observations), default=None)
    source = observations[0].source if observations else None
    if not ok:
        why = "; ".join(sorted({f"{o.status}: {o.detail or ''}".rstrip(": ") for o in observations})) or "no observation"
        return NotaryResult(name, region, key_id, "unreachable", f"notary could not observe the target ({why})",
                            False, (), ips, age, source)
    keys = sorted({o.spki_sha256 for o in ok if o.spki_sha256})
    pins = tuple(_pin(k) for k in keys)
    sightings = [s for o in observations for s in o.key_history if s.spki_sha256 == client.spki_sha256]
    agrees, reason = False, ""
    if client.spki_sha256 in keys:
        agrees, reason = True, "saw the same key"
    elif policy.weak_consistency and any(s.last_seen >= now - policy.history_window for s in sightings):
        agrees, reason = True, "saw this key for the site recently (weak consistency)"
    if not agrees:
        return NotaryResult(name, region, key_id, "disagrees", "saw a different key", True, pins, ips, age, source)
    if policy.quorum_duration > 0:
        held = min((s.first_seen for s in sightings), default=now)
        if now - held < policy.quorum_duration:
            return NotaryResult(
                name, region, key_id, "agrees",
                f"saw the same key, but only for {now - held}s (< quorum duration {policy.quorum_duration}s)",
                False, pins, ips, age, source,
            )
    return NotaryResult(name, region, key_id, "agrees", reason, True, pins, ips, age, source)


def _regions(results: Sequence[NotaryResult]) -> tuple[str, ...]:
    if not results:
        return ()
    return tuple(sorted({r.region for r in results if _known_region(r.region)}))  # type: ignore[misc]


@functools.lru_cache(maxsize=1024)  # a pure function of a bundle's few region names; asked per result per tally
def _known_region(region: str | None) -> bool:
    """``unknown`` (any case), empty, blank or absent is no region."""
    return bool(region and region.strip()) and region.strip().lower() not in _UNKNOWN_REGIONS  # type: ignore[union-attr]


def _spans(regions: Sequence[str], min_regions: int) -> bool:
    """Whether ``regions`` (known, distinct) meet ``min_regions``; 1 or less is no requirement."""
    return min_regions <= 1 or len(regions) >= min_regions


def judge_all(client: ClientView, evidence: Sequence[Evidence], policy: Policy, now: int) -> list[NotaryResult]:
    """One :class:`NotaryResult` per notary asked (a repeated notary key is ``excluded``)."""
    seen: set[str] = set()
    results: list[NotaryResult] = []
    for ev in evidence:
        if ev.key_id in seen:
            results.append(NotaryResult(ev.name, ev.region, ev.key_id, "excluded", "duplicate notary key"))
            continue
        seen.add(ev.key_id)
        results.append(_judge(ev, client, policy, now))
    return results


def decide(
    client: ClientView,
    evidence: Sequence[Evidence],
    policy: Policy,
    now: int,
    *,
    host: str,
    port: int,
    complete: bool = True,
    context: CheckContext | None = None,
) -> Verdict:
    """Reach a verdict.  Pure: no I/O, no clock.  ``evidence`` holds one entry per notary asked."""
    return conclude(client, judge_all(client, evidence, policy, now), policy, now, host=host, port=port,
                    complete=complete, context=context)


def conclude(
    client: ClientView,
    results: Sequence[NotaryResult],
    policy: Policy,
    now: int,
    *,
    host: str,
    port: int,
    complete: bool = True,
    context: CheckContext | None = None,
) -> Verdict:
    """The verdict from per-notary results (one per notary asked) and the other evidence of ``context``."""
    v = _conclude_notaries(client, results, policy, now, host=host, port=port, complete=complete)
    if context is None:
        return v
    return _weigh_context(v, client, results, policy, now, context)


def _weigh_context(v: Verdict, client: ClientView, results: Sequence[NotaryResult], policy: Policy, now: int,
                   ctx: CheckContext) -> Verdict:
    """Proxies, then a declared interceptor, then the key memory (rules in :mod:`client.evidence`)."""
    count = policy.proxies == "count"
    vantages = tuple(judge_proxy(p, client.spki_sha256, counted=count) for p in ctx.proxies)
    target = f"[{v.host}]:{v.port}" if ":" in v.host else f"{v.host}:{v.port}"
    if vantages and count:
        as_results = [NotaryResult(x.name, None, "proxy:" + x.name, x.result, x.reason, counted=x.counted, pins=x.pins)
                      for x in vantages]
        both = _conclude_notaries(client, [*results, *as_results], policy, now, host=v.host, port=v.port,
                                  complete=v.complete)
        if v.status == "mitm_suspected" and both.status != "mitm_suspected":
            v = replace(v, summary=v.summary + " (unsigned proxies are counted too, but cannot overrule signed notaries)")
        else:
            v = replace(both, results=tuple(results),
                        summary=both.summary.replace(" notaries", " vantages (notaries and unsigned proxies)", 1))
    elif vantages:
        agree = sum(x.result == "agrees" for x in vantages)
        dis = [x for x in vantages if x.result == "disagrees"]
        if v.ok and dis:
            names = ", ".join(x.name for x in dis)
            v = replace(v, status="consistent_with_outliers", outliers=v.outliers + tuple(x.name for x in dis),
                        summary=v.summary + f"; unsigned proxy vantage(s) {names} saw a different key (their path may be intercepted)")
        elif not v.ok and v.status != "unreachable":
            v = replace(v, summary=v.summary + (f"; proxies (unsigned, not counted under policy {policy.name}): {agree} saw "
                                                f"your key, {len(dis)} saw a different key, {len(vantages) - agree - len(dis)} failed"))
    if vantages:  # (a Verdict's vantages default to none: no copy of it for nothing)
        v = replace(v, vantages=vantages)
    note = match_interceptor(ctx.expect, client.proven_keys or ((client.spki_sha256,) if client.spki_sha256 else ()))
    if note is not None:
        v = replace(v, interception=note)
        if note.matched and v.status == "mitm_suspected":
            v = replace(v, status="intercepted_as_expected",
                        summary=f"intercepted as expected: for {target} you see a key of your declared interceptor "
                                f"({note.matched}), and the other vantages see a different key. " + v.summary)
        elif note.matched:
            v = replace(v, summary=v.summary + f"; your key for {target} is your declared interceptor's ({note.matched})")
        elif v.status == "mitm_suspected":
            v = replace(v, summary=v.summary + "; this is NOT your declared interceptor")
    if ctx.memory is not None:
        status, mem = remember_note(ctx.memory, client.spki_sha256, v.status, now)
        summary = v.summary
        if status == "key_changed":
            summary = (f"key changed: for {target} you see {client.to_json()['pin']}, not the key(s) you saw before "
                       f"({', '.join(mem.previous)}), and no quorum of vantages confirms it. " + summary)
        elif status == "pin_mismatch":
            summary = (f"pin mismatch: for {target} you see {client.to_json()['pin']}, not the key you pinned. " + summary)
        elif mem.change in ("rotation", "changed"):
            summary = summary + f"; memory: {mem.detail}"
        v = replace(v, status=status, memory=mem, summary=summary)
    return v


@dataclass(frozen=True, slots=True)
class _Tally:
    """Which rule of the module docstring decides, with the counts it was decided on."""

    rule: str  # unreachable | too_few | accept | mitm | regions | few_answers | split
    need: int
    agree: list[NotaryResult]
    disagree: list[NotaryResult]
    agree_regions: tuple[str, ...]
    dis_regions: tuple[str, ...]

    @property
    def status(self) -> str:
        if self.rule == "accept":
            return "consistent_with_outliers" if self.disagree else "consistent"
        return _RULE_STATUS[self.rule]


_RULE_STATUS = {"unreachable": "unreachable", "too_few": "insufficient", "mitm": "mitm_suspected",
                "regions": "insufficient", "few_answers": "insufficient", "split": "split_view"}


def _tally(client: ClientView, results: Sequence[NotaryResult], policy: Policy) -> _Tally:
    """Rules 1-6 of the module docstring over per-notary results: the one place they are applied."""
    n = len(results)
    need = policy.required(n)
    agree = [r for r in results if r.result == "agrees" and r.counted]
    disagree = [r for r in results if r.result == "disagrees"]
    a, d = len(agree), len(disagree)
    agree_regions = _regions(agree)
    dis_regions = _regions(disagree)
    if client.status != "ok" or not client.spki_sha256:
        rule = "unreachable"
    elif n < policy.min_notaries:
        rule = "too_few"
        need = policy.min_notaries  # so "N needed" and "needs at least N" say the same
    elif a >= need and _spans(agree_regions, policy.min_regions):
        rule = "accept"
    elif d >= need and _spans(dis_regions, policy.min_regions):
        rule = "mitm"
    elif a >= need or d >= need:
        rule = "regions"  # a quorum by count that fails the region-span rule: never accepted, never mitm
    elif a + d < need:
        rule = "few_answers"
    else:
        rule = "split"
    return _Tally(rule, need, agree, disagree, agree_regions, dis_regions)


def notary_status(client: ClientView, results: Sequence[NotaryResult], policy: Policy) -> str:
    """The status :func:`conclude` gives ``results`` without a context (no summary built): for early decisions."""
    return _tally(client, results, policy).status


def _conclude_notaries(
    client: ClientView,
    results: Sequence[NotaryResult],
    policy: Policy,
    now: int,
    *,
    host: str,
    port: int,
    complete: bool = True,
) -> Verdict:
    """The verdict from per-notary results (one per notary asked)."""
    n = len(results)
    t = _tally(client, results, policy)
    need, min_regions, status = t.need, policy.min_regions, t.status
    agree, disagree, agree_regions, dis_regions = t.agree, t.disagree, t.agree_regions, t.dis_regions
    a, d = len(agree), len(disagree)
    quorum_pins = tuple(sorted({p for r in disagree for p in r.pins}))
    outliers = tuple(r.name for r in disagree)
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    mine = _pin(client.spki_sha256) if client.spki_sha256 else None

    if t.rule == "unreachable":
        why = f"{client.status}: {client.detail}" if client.detail else client.status
        summary = f"unreachable: you could not complete a TLS handshake with {target} ({why})"
    elif t.rule == "too_few":
        summary = f"insufficient: {n} notaries asked; policy {policy.name} needs at least {policy.min_notaries}"
    elif t.rule == "accept":
        if d:
            names = ", ".join(f"{r.name} ({r.region or '?'})" for r in disagree)
            summary = (f"consistent: {a}/{n} notaries saw your key for {target}; outliers {names} saw a "
                       f"different key (their network path may be intercepted)")
        else:
            summary = f"consistent: {a}/{n} notaries in {len(agree_regions) or 1} region(s) saw the same key as you for {target} ({mine})"
    elif t.rule == "mitm":
        summary = (f"MITM suspected: {d}/{n} notaries saw a different key for {target} than you did "
                   f"(you: {mine}; they: {', '.join(quorum_pins)}); your connection may be intercepted")
    elif t.rule == "regions":
        side, regions, k = ("saw your key", agree_regions, a) if a >= need else ("saw a different key", dis_regions, d)
        summary = (f"insufficient: {k}/{n} notaries {side} for {target}, but they span {len(regions)} "
                   f"region{'s' if len(regions) != 1 else ''}, policy {policy.name} needs {min_regions} "
                   f"(an unknown or empty region counts as none)")
    elif t.rule == "few_answers":
        late = sum(1 for r in results if r.result == "agrees" and not r.counted)
        summary = (f"insufficient: only {a + d}/{n} notaries gave answers that count for {target}; {need} needed"
                   + (f" ({late} saw your key, but not yet for the quorum duration)" if late else ""))
    else:
        summary = f"split view: for {target}, {a} notaries saw your key and {d} saw others; no quorum of {need}/{n}"

    return Verdict(
        status=status, host=host, port=port, client=client,
        quorum_pins=(mine,) if status in ACCEPTING and mine else quorum_pins,  # the key the quorum saw
        agreeing=a, asked=n, required=need, regions_agreeing=agree_regions, results=tuple(results),
        summary=summary, policy=policy.name, checked_at=now, complete=complete,
        outliers=outliers if status == "consistent_with_outliers" else (),
    )
