"""Judging the notaries asked (:mod:`client.verdict`): one result per notary, then the tally.

:func:`judge_all` turns each notary's :class:`~client.verdict.Evidence` into a
:class:`~client.verdict.NotaryResult` (``agrees``, ``disagrees``, ``unreachable`` or the
verifier's failure; a repeated notary key is ``excluded``), against the client's key, the
policy's weak consistency (key history within ``history_window`` seconds) and quorum duration
(seconds).  :func:`notary_status` applies rules 1-6 of :mod:`client.verdict`'s theory of
operation to those results (the ``required(n)`` quorum and the span of ``min_regions``
distinct known regions) and gives the status without building a summary: for early
decisions.  Pure: no I/O, no clock; ``now`` (unix seconds) is passed in.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

from client._verdict_types import ClientView, Evidence, NotaryResult, _pin
from client.policy import Policy

__all__ = ["judge_all", "notary_status"]

_UNKNOWN_REGIONS = {"", "unknown", None}


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


@dataclass(frozen=True, slots=True)
class _Tally:
    """Which rule of :mod:`client.verdict`'s docstring decides, with the counts it was decided on."""

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
    """Rules 1-6 of :mod:`client.verdict`'s docstring over per-notary results: the one place they are applied."""
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
