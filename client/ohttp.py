"""Asking notaries through an Oblivious HTTP relay (RFC 9458), so that no single one
learns both who asks and what.

Theory of operation.  For each notary the client

1. gets the notary's signed identity document (through the relay when the relay
   is a Parallax relay, ``GET <relay>/v1/relay/<key_id>/notary``; directly from
   the notary with a third-party relay), verifies it against the bundle key
   (:func:`client.verify.check_identity`) and takes its gateway key
   configurations (``ohttp_keys``; the first, the *current* key, is used);
   verified key configurations are cached for :data:`KEYS_TTL` seconds;
2. encrypts ``POST /v1/observe`` (the same JSON body as a direct request, with
   the same fresh nonce) as a Binary HTTP request to that key, and POSTs the
   ``message/ohttp-req`` to the relay, which forwards it to the notary's
   ``/.well-known/ohttp-gateway``;
3. decrypts the ``message/ohttp-res`` and hands the envelopes, unverified, to
   the same checks as a direct answer (:mod:`client.verify`): nothing changes
   in what is verified or counted.

Relay choice (:func:`plan_relay`): ``"auto"`` picks a random notary of the
bundle whose entry says ``relay: true`` and does not ask it as a notary
(Convergence's *bouncing*: the relay sees who, never what).  If that relay
fails (cannot be reached, times out, answers 5xx), each request falls back to
the next relay in a random order; a notary's own request never goes through
that same notary.  An explicit URL is a Parallax relay's base URL, or, when it
contains ``{key_id}``, a template of a standard RFC 9458 relay resource per
gateway (e.g. ``https://relay.example/ohttp/{key_id}``); a bundle notary at the
same origin (scheme, host, port; compared normalised) is not asked, as with
``auto``.  The verdict names the relays used (``Verdict.relays``) and the
notaries that saw the client's address because their identity document was
fetched directly (``Verdict.address_seen_by``: a third-party relay forwards
only encrypted requests).

Padding (RFC 9292 zero padding): each request is padded to a multiple of
:data:`~notary.core.bhttp.REQUEST_PAD_BYTES` (one KiB for every request this
client makes), each answer by the gateway to a power of two of at least
:data:`~notary.core.bhttp.RESPONSE_MIN_BUCKET`, so a relay sees sizes that do
not name the site (docs/protocol.md section 13).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import random
import time
from dataclasses import dataclass, field, replace
from typing import Any, Sequence
from urllib.parse import quote, urlsplit

import aiohttp

from notary.core import Target, bhttp, canonical_decode, canonical_encode, ohttp, verify_identity
from notary.errors import EncodingError, InputError, OhttpError, RemoteError, VerificationError
from client.bundle import Bundle, BundleEntry
from client.fanout import MAX_RESPONSE_BYTES, RawAnswer, answer_from_doc, observe_body
from client.transport import Transport, as_transport
from client.verdict import Verdict
from client.verify import check_identity

__all__ = ["RelayRoute", "RelayPlan", "plan_relay", "ask_notary_relayed", "KEYS_TTL", "RelayFailed"]

#: Seconds a verified gateway key configuration is reused before it is fetched again.
KEYS_TTL = 600
_keys_cache: dict[tuple[str, str], tuple[float, ohttp.KeyConfig]] = {}


class RelayFailed(Exception):
    """The relay itself failed (not the gateway behind it): try another relay."""


@dataclass(frozen=True, slots=True)
class RelayRoute:
    """Where to send one notary's requests.  ``template`` and ``identity_template`` hold ``{key_id}``."""

    name: str
    template: str
    identity_template: str | None
    via: str | None = None  # the bundle key id of a relay notary, so it never relays its own request

    @classmethod
    def for_url(cls, url: str) -> "RelayRoute":
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(f"relay must be auto, none or an http(s) URL, not {url!r}", "bad_relay")
        if "{key_id}" in url:
            return cls(f"{parts.scheme}://{parts.netloc}", url, None)
        base = url.rstrip("/")
        return cls(base, base + "/v1/relay/{key_id}", base + "/v1/relay/{key_id}/notary")

    @classmethod
    def for_entry(cls, entry: BundleEntry) -> "RelayRoute":
        r = cls.for_url(entry.url)
        return cls(entry.name, r.template, r.identity_template, entry.key_id)


async def _get(transport: Transport, method: str, url: str, *, relay_hop: bool, body: bytes | None = None,
               content_type: str | None = None) -> tuple[int, str, bytes]:
    try:
        resp = await transport.request(method, url, body=body, content_type=content_type)
    except (aiohttp.ClientError, OSError, ValueError, RemoteError) as exc:
        if relay_hop:
            raise RelayFailed(f"relay unreachable: {type(exc).__name__}") from None
        raise
    if relay_hop and resp.status >= 500:
        raise RelayFailed(f"relay answered HTTP {resp.status}")
    return resp.status, resp.content_type, resp.body


def _fill(template: str, entry: BundleEntry) -> str:
    """The relay resource for one notary: ``{key_id}`` replaced (nothing else in the URL is touched)."""
    return template.replace("{key_id}", quote(entry.key_id, safe=":"))


def _reason(status: int, body: bytes) -> str:
    try:
        doc = canonical_decode(body)
        why = doc.get("reason", "") if isinstance(doc, dict) else ""
    except EncodingError:
        why = ""
    return f"HTTP {status} {why}".strip()


async def _gateway_key(transport: Transport, entry: BundleEntry, route: RelayRoute,
                       now: float, seen: list[str] | None = None) -> tuple[ohttp.KeyConfig, Any]:
    """The notary's current gateway key, from its identity document verified with the bundle key.

    Returns (key config, identity envelope or None when the cached key was used).  When the
    document is fetched from the notary itself (no relay route for it), its name is added
    to ``seen``: that notary saw the client's address.
    """
    cached = _keys_cache.get((entry.url, entry.key_id))
    if cached is not None and now - cached[0] < KEYS_TTL:
        return cached[1], None
    if route.identity_template is not None:
        status, _, body = await _get(transport, "GET", _fill(route.identity_template, entry), relay_hop=True)
    else:  # a third-party relay forwards only message/ohttp-req: ask the notary itself
        if seen is not None and entry.name not in seen:
            seen.append(entry.name)
        status, _, body = await _get(transport, "GET", entry.url + "/v1/notary", relay_hop=False)
    if status != 200:
        raise ValueError(f"identity document: {_reason(status, body)}")
    envelope = canonical_decode(body, max_bytes=MAX_RESPONSE_BYTES)
    why = check_identity(entry, envelope, now=int(now))  # stale: a replay, e.g. to undo a key rotation
    if why:
        raise VerificationError(why)
    ident = verify_identity(envelope, entry.verify_key)
    if not ident.ohttp_keys:
        raise OhttpError("the notary's identity lists no Oblivious HTTP gateway keys", "no_gateway_keys")
    try:
        configs = ohttp.decode_keys(base64.b64decode(ident.ohttp_keys, validate=True))
    except binascii.Error:
        raise OhttpError("the notary's ohttp_keys is not base64", "bad_key_config") from None
    usable = [c for c in configs if _supported(c)]
    if not usable:
        raise OhttpError("no usable gateway key configuration", "unsupported_suite")
    if len(_keys_cache) > 4096:
        _keys_cache.clear()
    _keys_cache[(entry.url, entry.key_id)] = (now, usable[0])
    return usable[0], envelope


def _supported(config: ohttp.KeyConfig) -> bool:
    try:
        config.choose_suite()
    except OhttpError:
        return False
    return True


def forget_gateway_key(entry: BundleEntry) -> None:
    """Drop a cached key (after the gateway refused it, e.g. following a rotation)."""
    _keys_cache.pop((entry.url, entry.key_id), None)


async def _ask_once(transport: Transport, entry: BundleEntry, route: RelayRoute, body: dict[str, Any],
                    now: float, seen: list[str] | None = None) -> RawAnswer:
    config, identity = await _gateway_key(transport, entry, route, now, seen)
    authority = urlsplit(entry.url).netloc
    inner = bhttp.encode_request(bhttp.Request(
        "POST", "https", authority, "/v1/observe", (("content-type", "application/json"),), canonical_encode(body)))
    # Zero-padded (RFC 9292), so the relay sees the same size whatever the host's name.
    enc, ctx = ohttp.encapsulate_request(config, bhttp.pad(inner, bhttp.request_padded_size(len(inner))))
    status, ctype, raw = await _get(transport, "POST", _fill(route.template, entry), relay_hop=True,
                                    body=enc, content_type=ohttp.REQUEST_MEDIA_TYPE)
    if status != 200 or ctype != ohttp.RESPONSE_MEDIA_TYPE:
        if status == 400:
            forget_gateway_key(entry)  # e.g. the key was rotated away: fetch it again next time
        return RawAnswer(entry, error=f"gateway: {_reason(status, raw)}")
    resp = bhttp.decode_response(ohttp.decapsulate_response(ctx, raw))
    if resp.status != 200:
        return RawAnswer(entry, error=_reason(resp.status, resp.content))
    return answer_from_doc(entry, canonical_decode(resp.content, max_bytes=MAX_RESPONSE_BYTES), identity)


async def ask_notary_relayed(
    transport: Transport | aiohttp.ClientSession,
    entry: BundleEntry,
    target: Target,
    nonce: str,
    *,
    routes: Sequence[RelayRoute],
    timeout: float,
    max_age: int | None = None,
    all_addresses: bool = True,
    used: list[str] | None = None,
    failed: set[str] | None = None,
    seen: list[str] | None = None,
    clock: Any = time.time,
) -> RawAnswer:
    """Ask one notary through the first working route, all within ``timeout`` seconds.

    A route whose relay fails is added to ``failed`` (shared by the fan-out, so
    other requests skip it) and the next route is tried; the route that
    answered is appended to ``used``; a notary whose identity was fetched directly, to
    ``seen``.  Failures are values, as in :func:`client.fanout.ask_notary`.
    ``transport``: a :class:`~client.transport.Transport` (or an aiohttp session, wrapped).
    """
    tr = as_transport(transport)
    body = observe_body(target, nonce, max_age=max_age, all_addresses=all_addresses)
    failed = failed if failed is not None else set()
    last = "no relay available for this notary"
    try:
        async with asyncio.timeout(timeout):
            for route in routes:
                if route.via == entry.key_id or route.name in failed:
                    continue
                try:
                    answer = await _ask_once(tr, entry, route, body, clock(), seen)
                except RelayFailed as exc:
                    failed.add(route.name)
                    last = f"relay {route.name}: {exc}"
                    continue
                if used is not None and route.name not in used:
                    used.append(route.name)
                return answer
    except TimeoutError:
        return RawAnswer(entry, error=f"no answer within {timeout:g}s (via relay)")
    except (aiohttp.ClientError, OSError, ValueError, EncodingError, VerificationError, OhttpError, RemoteError) as exc:
        return RawAnswer(entry, error=f"{type(exc).__name__}: {exc}"[:300])
    return RawAnswer(entry, error=last)


@dataclass
class RelayPlan:
    """Which notaries to ask and through which relays; filled in with the relays used."""

    entries: tuple[BundleEntry, ...]
    routes: tuple[RelayRoute, ...]
    used: list[str] = field(default_factory=list)
    failed: set[str] = field(default_factory=set)
    seen: list[str] = field(default_factory=list)  # notaries that saw the client's address

    async def ask(self, transport: Transport | aiohttp.ClientSession, entry: BundleEntry, target: Target, nonce: str, *,
                  timeout: float, max_age: int | None, all_addresses: bool, **_: Any) -> RawAnswer:
        return await ask_notary_relayed(transport, entry, target, nonce, routes=self.routes, timeout=timeout,
                                        max_age=max_age, all_addresses=all_addresses, used=self.used,
                                        failed=self.failed, seen=self.seen)

    def annotate(self, verdict: Verdict) -> Verdict:
        """Name the relays used, and the notaries asked that saw the client's address: those whose
        identity was fetched directly, and fallback relays that were also asked as notaries."""
        asked = {e.key_id: e.name for e in self.entries}
        relaying = [asked[r.via] for r in self.routes if r.via in asked and r.name in self.used]
        seen = tuple(dict.fromkeys([*self.seen, *relaying]))
        return replace(verdict, relays=tuple(self.used), address_seen_by=seen)


def relay_capable(bundle: Bundle) -> tuple[BundleEntry, ...]:
    return tuple(e for e in bundle.notaries if e.relay)


def plan_relay(bundle: Bundle, relay: str | None, *, rng: random.Random | None = None) -> RelayPlan | None:
    """None for ``relay`` None/``"none"``; else the notaries to ask and the relay routes in order."""
    if relay is None or relay == "none":
        return None
    if not isinstance(relay, str):
        raise InputError("relay must be 'auto', 'none' or a URL", "bad_relay")
    entries = tuple(bundle.notaries)
    if relay == "auto":
        rng = rng or random.SystemRandom()
        relays = list(relay_capable(bundle))
        if not relays:
            raise InputError("the bundle names no relay-capable notary (an entry with \"relay\": true)", "no_relay")
        rng.shuffle(relays)
        first = relays[0]
        # Bouncing: the first relay is not asked as a notary; the fallbacks are, but
        # never through themselves.
        return RelayPlan(tuple(e for e in entries if e.key_id != first.key_id),
                         tuple(RelayRoute.for_entry(e) for e in relays))
    route = RelayRoute.for_url(relay)
    # A relay URL at a bundle notary's own origin is that notary: it would see both the
    # client's address and the site, so it is not asked (as with auto).
    mine = [e for e in entries if _origin(e.url) == _origin(route.template)]
    if mine:
        route = replace(route, via=mine[0].key_id)
    return RelayPlan(tuple(e for e in entries if e not in mine), (route,))


def _origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of ``url``, normalised: lower case, no trailing dot, IP literals in
    canonical form, the scheme's default port made explicit."""
    parts = urlsplit(url.replace("{key_id}", "k"))
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower().rstrip(".")
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, host, port if port is not None else {"http": 80, "https": 443}.get(scheme)
