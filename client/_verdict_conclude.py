"""The verdict over all notaries asked (:mod:`client.verdict`): :func:`decide` and :func:`conclude`.

:func:`conclude` builds the :class:`~client.verdict.Verdict` from per-notary results: the
status of the tally (:mod:`client._verdict_judge`, rules 1-6 of :mod:`client.verdict`), the
quorum's pins, the outliers and a one-line summary saying why; then it weighs the other
evidence of a :class:`~client.evidence.CheckContext` (SOCKS proxy vantages, a declared
interceptor, the keys this client remembers; rules in :mod:`client.evidence`).
:func:`decide` is :func:`~client._verdict_judge.judge_all` followed by :func:`conclude`.
Pure: no I/O, no clock; ``now`` (unix seconds) is passed in.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from client._verdict_judge import _tally, judge_all
from client._verdict_types import ACCEPTING, ClientView, Evidence, NotaryResult, Verdict, _pin
from client.evidence import CheckContext, judge_proxy, match_interceptor, remember_note
from client.policy import Policy

__all__ = ["decide", "conclude"]

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
