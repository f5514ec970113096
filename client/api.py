"""``verify_with_notaries``: the library call.

It draws a fresh random nonce, probes the target itself (unless the caller
passes what it ``observed``), asks every notary in the bundle in parallel,
verifies every answer (:mod:`client.verify`), and decides (:mod:`client.verdict`).
It stops early once more answers cannot change the outcome class
(accept / mitm / other), unless ``wait_all``; notaries not waited for are
reported as ``not_waited`` and count against the quorum.

Per-check cost is kept low for callers that check every page (the browser
helper): notaries are asked over one pool of kept-alive HTTP/1.1 connections
per event loop (:mod:`client.pool`) unless the caller passes ``session=``, all under one timer
(each notary still gets ``timeout`` seconds; a notary unanswered then is reported as such); identity documents
are re-fetched only every :data:`IDENTITY_TTL` seconds; observation envelopes
already verified are remembered (:func:`client.verify.verify_cached`); each
answer is judged once, when it arrives.  The client's own probe is started
before the notary requests (its connect and two round trips are the longest
chain of waits) and resolves names through a short-lived cache
(:mod:`client.dnscache`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import random
import secrets
import time
from typing import Any, Callable, Sequence

import aiohttp

from notary import eventloop
from notary.core import Target, observed_spki, split_target
from notary.core.pins import load_certificate, spki_hex_from_pin, spki_sha256
from notary.errors import InputError
from notary.prober import ProbeLimits, Prober
from client.bundle import Bundle, BundleEntry, load_bundle
from client.dnscache import CachingResolver
from client.fanout import RawAnswer, ask_untimed, timed_out
from client.ohttp import plan_relay
from client.evidence import CheckContext, Expectation, judgement
from client.interception import proven_keys
from client.keymemory import KeyStore
from client.policy import Policy, get_policy
from client.socks import ANY_ADDRESS, MAX_VIAS, ProxySpec, parse_via, probe_all_via
from client.pool import shared_pool
from client.transport import Transport, as_transport
from client.verdict import (
    ClientView, Evidence, NotaryResult, Verdict, conclude, judge_all, notary_status, outcome_class,
)
from client.verify import check_answer

__all__ = ["verify_with_notaries", "verify_with_notaries_sync", "client_probe"]


#: Identity documents verified recently, by (url, key id) -> unix time verified.  A
#: notary's identity is re-fetched and re-checked after IDENTITY_TTL seconds.
IDENTITY_TTL = 600
_identities: dict[tuple[str, str], float] = {}


def _identity_fresh(e: BundleEntry, now: float) -> bool:
    t = _identities.get((e.url, e.key_id))
    return t is not None and now - t < IDENTITY_TTL


def _remember_identity(e: BundleEntry, now: float) -> None:
    if len(_identities) > 4096:
        _identities.clear()
    _identities[(e.url, e.key_id)] = now


#: Probers by (timeout, connect_to, clock[, host, port]): a Prober holds an SSL context; reuse it.
_probers: dict[tuple[object, ...], Prober] = {}
#: The client's own probes resolve names through one short-lived cache (:mod:`client.dnscache`).
_resolver = CachingResolver()


async def client_probe(
    target: Target,
    *,
    timeout: float = 5.0,
    connect_to: tuple[str, int] | None = None,
    clock: Callable[[], float] = time.time,
    extra_cas: Sequence[bytes] = (),
) -> ClientView:
    """Probe the target from this machine with the notary's own prober (any address allowed).

    The name is resolved through :mod:`client.dnscache` (a successful answer is reused for
    :data:`~client.dnscache.DNS_TTL` seconds); the TCP connection and TLS handshake are made afresh every time.

    ``extra_cas`` (DER): CA certificates a declared interceptor issues from; see :mod:`client.interception`.
    """
    prober = _probers.get((timeout, connect_to, clock, target.host, target.port) if connect_to else (timeout, None, clock))
    if prober is None:
        override = {(target.host, target.port): connect_to} if connect_to else None
        prober = Prober(ANY_ADDRESS, clock=lambda: int(clock()), limits=ProbeLimits(connect_timeout=timeout, handshake_timeout=timeout),
                        connect_override=override, resolver=_resolver)
        if len(_probers) > 64:
            _probers.clear()
        _probers[(timeout, connect_to, clock, target.host, target.port) if connect_to else (timeout, None, clock)] = prober
    result = (await prober.probe(target))[0]
    return ClientView(result.status, result.spki_sha256, result.ip, result.detail, "probe",
                      proven_keys=proven_keys(result.chain, extra_cas))


def _evidence(answer: RawAnswer, *, nonce: str, target: Target, now: int, policy: Policy) -> Evidence:
    e = answer.entry
    if answer.error is not None or answer.envelopes is None:
        return Evidence(e.name, e.region, e.key_id, e.url, failure=answer.kind, reason=answer.error or "no answer")
    ev = check_answer(e, answer.envelopes, freshness=answer.freshness, nonce=nonce, host=target.host,
                      port=target.port, now=now, policy=policy, identity=answer.identity, sni=target.sni)
    if answer.identity is not None and ev.failure is None:
        _remember_identity(e, now)
    return ev


#: :func:`notary.core.split_target` memoised for plain strings and ports (pure; a page's checks
#: name the same few targets; invalid input raises and is never cached).
_split = functools.lru_cache(maxsize=256)(split_target)


@functools.lru_cache(maxsize=4096)  # immutable, asked up to three times per missing notary per arrival (_settled)
def _placeholder(name: str, region: str, key_id: str, result: str) -> NotaryResult:
    return NotaryResult(name, region, key_id, result, "pending", counted=result != "unreachable")


async def verify_with_notaries(
    host: str,
    port: int | None = None,
    *,
    bundle: Bundle | str | None = None,
    policy: Policy | str | None = None,
    observed: bytes | str | ClientView | None = None,
    timeout: float = 10.0,
    sni: str | None = None,
    wait_all: bool = False,
    subset: int | None = None,
    connect_to: tuple[str, int] | None = None,
    max_age: int | None = None,
    session: aiohttp.ClientSession | Transport | None = None,
    clock: Callable[[], float] = time.time,
    relay: str | None = None,
    via: Sequence[str | ProxySpec] = (),
    isolate: bool = True,
    expect_interceptor: Sequence[str | bytes] = (),
    memory: KeyStore | None = None,
) -> Verdict:
    """Ask the bundle's notaries about ``host:port`` and compare with what this client sees.

    ``host`` may be written as people paste it: ``example.com``, ``example.com:8443``,
    ``https://example.com:8443/path``, an IDN name, ``[2001:db8::1]:443``
    (:func:`notary.core.split_target`).  ``port`` (default 443) applies when
    ``host`` names none; a port in both that differs is an :class:`InputError`.

    ``observed`` is a certificate (DER or PEM) or a ``sha256/`` pin the caller
    already holds, or a :class:`ClientView` from :func:`client_probe` (then the
    client does not probe again).  ``timeout`` bounds each
    notary and the client's own probe, in seconds.  ``subset`` asks a random
    ``k`` notaries only (privacy).  ``connect_to`` points only the client's own
    probe at ``(address, port)``.  ``max_age`` (seconds) is sent to the notaries
    as the oldest cached observation they may answer with (default: the
    policy's ``max_age``, the age the client accepts).  ``relay`` (``"auto"``,
    ``"none"``/None, or a relay URL) asks the notaries through an Oblivious HTTP
    relay (:mod:`client.ohttp`); ``"auto"`` picks a relay-capable notary of the
    bundle and does not ask it; the verdict's ``relays`` names the relays used.
    ``session`` is the caller's aiohttp session (its connector, proxy and TLS
    settings apply; redirects are still never followed) or a
    :class:`~client.transport.Transport` such as a :class:`client.pool.NotaryPool`
    the caller owns; by default notaries are asked over one pool of kept-alive
    connections per event loop (:func:`client.pool.shared_pool`).  Raises :class:`~notary.errors.InputError`
    for bad arguments; network trouble is reported in the verdict, never raised.
    """
    given = 443 if port is None else port
    h, p = _split(host, given) if type(host) is str and type(given) is int else split_target(host, given)
    if port is not None and p != port:
        raise InputError(f"two ports for one target: {host!r} and port={port}", "bad_target")
    target = Target.parse(h, p, sni)
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and 0 < timeout <= 600):
        raise InputError("timeout must be a number of seconds in (0, 600]", "bad_timeout")
    if subset is not None and subset < 1:
        raise InputError("subset must be at least 1", "bad_subset")
    pol = get_policy(policy)
    specs = [parse_via(v) for v in via]
    if len(specs) > MAX_VIAS:
        raise InputError(f"at most {MAX_VIAS} proxies per check", "bad_via")
    expected, extra_cas = _expectation(expect_interceptor)
    bun = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    plan = plan_relay(bun, relay)
    entries: Sequence[BundleEntry] = plan.entries if plan else bun.notaries
    if subset is not None and 0 < subset < len(entries):
        entries = random.SystemRandom().sample(list(entries), subset)
    nonce = secrets.token_urlsafe(24)
    if isinstance(observed, ClientView):
        client_view: ClientView | None = observed
    elif isinstance(observed, str) and observed.startswith("sha256/"):
        client_view = ClientView("ok", observed_spki(observed), None, None, "supplied")
    elif observed is not None:
        der = load_certificate(observed)
        client_view = ClientView("ok", spki_sha256(der), None, None, "supplied", proven_keys=proven_keys([der], extra_cas))
    else:
        client_view = None

    keys = [e.key_id + e.url for e in entries]  # evidence by notary (key id + URL)
    sess: Transport = as_transport(session) if session is not None else shared_pool()
    tasks: dict[asyncio.Task[RawAnswer], BundleEntry] = {}
    probe_task: asyncio.Task[ClientView] | None = None
    proxy_task: asyncio.Task[Any] | None = None
    expiry: asyncio.TimerHandle | None = None
    every: list[asyncio.Task[Any]] = []
    # Completed tasks, in the order they finished; ``waker`` is resolved when one arrives.
    arrived: list[asyncio.Task[Any]] = []
    waker: list[asyncio.Future[None]] = []

    def arrive(t: asyncio.Task[Any]) -> None:
        arrived.append(t)
        if waker and not waker[0].done():
            waker[0].set_result(None)

    try:
        if client_view is None:
            # Started first: the probe (connect, two round trips) is the longest chain of waits,
            # so its first packet leaves before the notary requests take the loop.
            probe_task = asyncio.create_task(client_probe(target, timeout=timeout, connect_to=connect_to, clock=clock,
                                                          extra_cas=extra_cas))
            every.append(probe_task)
        for e in entries:
            # Asked directly, a notary has no timer of its own: one timer (below) stops every
            # notary still unanswered after ``timeout`` seconds.  Relayed asks time themselves.
            t: asyncio.Task[Any] = asyncio.create_task((plan.ask if plan else ask_untimed)(sess, e, target, nonce, timeout=timeout,
                                               all_addresses=pol.all_addresses,
                                               max_age=pol.max_age if max_age is None else max_age,
                                               fetch_identity=not _identity_fresh(e, clock())))
            tasks[t] = e
            every.append(t)
        if plan is None and tasks:
            expiry = asyncio.get_running_loop().call_later(timeout, _stop_unanswered, tasks)
        if specs:
            proxy_task = asyncio.create_task(probe_all_via(target, specs, timeout=timeout, isolate=isolate, clock=clock))
            every.append(proxy_task)
        for t in every:
            t.add_done_callback(arrive)
        evidence: dict[str, Evidence] = {}
        judged: dict[str, tuple[int, NotaryResult]] = {}  # each answer judged once (per second of `now`)
        remaining = len(every)
        loop = asyncio.get_running_loop()
        while remaining:
            if not arrived:
                waker[:] = [loop.create_future()]
                await waker[0]
            done = arrived[:]
            del arrived[:]
            remaining -= len(done)
            now = int(clock())
            for t in done:
                if t is probe_task:
                    client_view = probe_task.result()
                elif t is not proxy_task:
                    entry = tasks[t]
                    raw = timed_out(entry, timeout) if t.cancelled() else t.result()  # cancelled: only by the timer
                    evidence[entry.key_id + entry.url] = _evidence(raw, nonce=nonce, target=target, now=now, policy=pol)
            if wait_all or client_view is None or not remaining or (proxy_task is not None and not proxy_task.done()) \
                    or (specs and pol.proxies == "count"):
                continue  # counted proxies are not in _settled's arithmetic: wait for every notary
            if _settled(client_view, entries, keys, evidence, pol, now, judged):
                break
        now = int(clock())
        assert client_view is not None
        ordered = [
            evidence.get(k)
            or Evidence(e.name, e.region, e.key_id, e.url, failure="not_waited", reason="decided before this notary answered")
            for e, k in zip(entries, keys)
        ]
        complete = all(k in evidence for k in keys)
        if len({e.key_id for e in entries}) == len(entries):  # each judged alone: reuse this second's judgements
            results = [hit[1] if (hit := judged.get(k)) is not None and hit[0] == now else judge_all(client_view, [ev], pol, now)[0]
                       for k, ev in zip(keys, ordered)]
        else:
            results = judge_all(client_view, ordered, pol, now)
        mem = await asyncio.to_thread(memory.memory, target) if memory is not None else None
        ctx = CheckContext(tuple(proxy_task.result()) if proxy_task is not None else (), Expectation(expected), mem)
        verdict = conclude(client_view, results, pol, now, host=target.host, port=target.port, complete=complete,
                           context=ctx)
        if memory is not None and client_view.spki_sha256:
            disputed = (sum(r.result == "disagrees" for r in verdict.results)
                        + sum(v.result == "disagrees" for v in verdict.vantages))
            await asyncio.to_thread(memory.record, target, client_view.spki_sha256, judgement(verdict.status, disputed), now)
        return plan.annotate(verdict) if plan else verdict
    finally:
        if expiry is not None:
            expiry.cancel()
        left = [t for t in every if not t.done()]  # not waited for (early decision), or an error
        for t in left:
            t.cancel()
        if left:
            with contextlib.suppress(BaseException):
                await asyncio.gather(*left, return_exceptions=True)


def _stop_unanswered(tasks: dict["asyncio.Task[RawAnswer]", BundleEntry]) -> None:
    """The fan-out's one timer: every notary still unanswered is stopped (reported as timed out)."""
    for t in tasks:
        if not t.done():
            t.cancel()


def _expectation(declared: Sequence[str | bytes]) -> tuple[tuple[str, ...], tuple[bytes, ...]]:
    """Declared interceptors -> (SPKI hex keys, CA certificates DER).  Raises InputError for a bad pin or certificate."""
    keys: list[str] = []
    cas: list[bytes] = []
    for item in declared:
        if isinstance(item, str) and item.startswith("sha256/"):
            keys.append(spki_hex_from_pin(item))
        else:
            der = load_certificate(item)
            cas.append(der)
            keys.append(spki_sha256(der))
    return tuple(keys), tuple(cas)


def _settled(client: ClientView, entries: Sequence[BundleEntry], keys: Sequence[str], evidence: dict[str, Evidence],
             pol: Policy, now: int, judged: dict[str, tuple[int, NotaryResult]]) -> bool:
    """True when no way the outstanding notaries could answer changes the outcome class.

    ``keys[i]`` is the evidence key of ``entries[i]`` (key id + URL).
    """
    if len({e.key_id for e in entries}) == len(entries):
        known = []
        for k in keys:
            if k in evidence:
                hit = judged.get(k)
                if hit is None or hit[0] != now:
                    hit = judged[k] = (now, judge_all(client, [evidence[k]], pol, now)[0])
                known.append(hit[1])
    else:  # a repeated key is excluded by position: judge the whole list
        known = judge_all(client, [evidence[k] for k in keys if k in evidence], pol, now)
    missing = [e for e, k in zip(entries, keys) if k not in evidence]
    first = None
    for fill in ("agrees", "disagrees", "unreachable"):
        results = known + [_placeholder(e.name, e.region, e.key_id, fill) for e in missing]
        cls = outcome_class(notary_status(client, results, pol))
        if first is None:
            first = cls
        elif cls != first:
            return False
    return True


def verify_with_notaries_sync(host: str, port: int | None = None, **kwargs: object) -> Verdict:
    """The synchronous twin of :func:`verify_with_notaries` for scripts (runs its own event loop: uvloop
    where installed, see :mod:`notary.eventloop`)."""
    return eventloop.run(verify_with_notaries(host, port, **kwargs))  # type: ignore[arg-type]
