"""``parallax conformance URL``: check that a live notary speaks the protocol correctly.

The checks, in order (one ``PASS``/``FAIL``/``SKIP`` line each):

``identity``            ``GET /v1/notary`` is a DSSE envelope of the identity type,
                        signed by the key it names, whose ``key_id`` is that key's id,
                        with protocol ``parallax/2`` and a ``signed_at`` near now
                        (and, with ``--public-key``/``--key-id``, the key expected);
``healthz``             ``GET /healthz`` answers 200 ``{"status": "ok"}`` (same key id);
``openapi``             ``GET /v1/openapi.json`` is an OpenAPI 3 document listing the API;
``observe``             ``POST /v1/observe`` for ``--target``: observation envelopes
                        and a freshness statement that verify against the identity
                        key, a freshness leaf under the signed Merkle root that names
                        the nonce sent and exactly the envelopes' digests, the target
                        asked for, and sane times (protocol version 2);
``observe-get``         the same through ``GET /v1/observe/{host}/{port}``;
``freshness``           two concurrent requests for ``--target`` with different
                        nonces: each answer verifies with its own nonce and not with
                        the other's (and, informationally, whether the notary served
                        one observation signed once and batched the two leaves);
``refuse loopback``, ``refuse ipv4-mapped``
                        a correct notary answers a signed ``blocked_by_policy``
                        observation, without connecting, for ``127.0.0.1:P``
                        and for the same address written IPv4-mapped,
                        ``[::ffff:127.0.0.1]:P`` (unless its operator allowed
                        the network: ``--expect-allowed CIDR``);
``limit ...``           too many targets (400), an oversized body (413), a bad
                        nonce (400) and malformed JSON (400), each with a JSON
                        ``{"error", "reason"}`` body;
``ohttp-keys``          ``GET /.well-known/ohttp-gateway`` serves, as
                        ``application/ohttp-keys``, exactly the key configurations
                        the signed identity lists (``ohttp_keys``), with a usable one;
``ohttp-gateway``       an encapsulated ``GET /v1/notary`` through ``POST
                        /.well-known/ohttp-gateway`` decrypts to the signed identity,
                        and a tampered encapsulation is a 400 with a JSON reason.
                        Both are skipped for a notary whose identity lists no keys.

Which targets it uses.  The tool talks only to ``URL``.  The notary is asked to
observe the ``--target`` the operator chose (without it the observation checks
are skipped), and otherwise only ``127.0.0.1:P`` in the two spellings above,
where ``P`` is the ephemeral port of a TCP listener this run opens on
127.0.0.1 for its own duration (the refusal and limit checks use it).  It never
names a private-range address or a well-known port, so a notary that wrongly
connects reaches its own loopback on port ``P``: when it runs on this machine,
that is this run's listener, which records the connection (a refusal check
then fails even if the answer claimed ``blocked_by_policy``); a remote notary
would reach whatever listens on its own loopback port ``P``, usually nothing.
Redirects are never followed: a 3xx answer fails the check.  Exit codes: 0
every check passed (or was skipped), 1 a check failed, 64 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import ipaddress
import json
import secrets
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence
from urllib.parse import quote, urlsplit

import aiohttp

from notary import eventloop
from notary.httputil import BodyTooLarge, read_capped
from notary.core import bhttp, ohttp
from notary.core import (
    IDENTITY_TYPE,
    PROTOCOL,
    Identity,
    Target,
    VerifyKey,
    canonical_decode,
    verify_answer,
    verify_identity,
)
from notary.errors import EncodingError, InputError, OhttpError, VerificationError

__all__ = ["add_conformance_command", "run_conformance", "CheckResult", "REFUSAL_TARGETS"]

#: The refusal checks: (name, address).  Both name 127.0.0.1, so that a notary that
#: wrongly connects reaches the run's own listener (when on this machine), never a
#: private network or a service on a well-known port.
REFUSAL_TARGETS = (("refuse loopback", "127.0.0.1"), ("refuse ipv4-mapped", "::ffff:127.0.0.1"))
MAX_SKEW = 300
MAX_RESPONSE = 4 << 20
MAX_ENVELOPES = 16
DEFAULT_MAX_TARGETS = 16
DEFAULT_MAX_BODY = 64 * 1024


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    status: str  # pass | fail | skip
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail}


class _Fail(Exception):
    """A failed check (the message is the one-line reason)."""


class _Skip(Exception):
    """A check that cannot run here (the message says why)."""


@dataclass
class _Response:
    status: int
    content_type: str
    body: bytes


@dataclass
class _Ctx:
    base: str
    session: aiohttp.ClientSession
    timeout: float
    clock: Callable[[], float]
    key: VerifyKey | None = None
    identity: Identity | None = None
    limits: dict[str, int] = field(default_factory=dict)
    canary: "_Canary | None" = None

    @property
    def canary_port(self) -> int:
        assert self.canary is not None
        return self.canary.port


class _Canary:
    """A TCP listener on 127.0.0.1 (ephemeral port) that counts and closes every connection.

    The only place a wrongly-connecting notary on this machine can reach.
    """

    def __init__(self) -> None:
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None

    async def _on_connect(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()

    async def __aenter__(self) -> "_Canary":
        self._server = await asyncio.start_server(self._on_connect, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._server is not None:
            self._server.close()
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2)
            except (TimeoutError, OSError):
                pass


async def _request(ctx: _Ctx, method: str, path: str, *, data: bytes | None = None,
                   headers: dict[str, str] | None = None) -> _Response:
    try:
        async with asyncio.timeout(ctx.timeout):
            async with ctx.session.request(method, ctx.base + path, data=data, headers=headers,
                                           allow_redirects=False) as r:
                if 300 <= r.status < 400:
                    where = r.headers.get("Location", "")[:120]
                    raise _Fail(f"{method} {path}: redirect (HTTP {r.status} to {where!r}); redirects are never followed")
                try:
                    body = await read_capped(r.content, MAX_RESPONSE)
                except BodyTooLarge:
                    raise _Fail(f"{method} {path}: response larger than {MAX_RESPONSE} bytes") from None
                return _Response(r.status, r.headers.get("Content-Type", ""), body)
    except TimeoutError:
        raise _Fail(f"{method} {path}: no answer within {ctx.timeout:g}s") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise _Fail(f"{method} {path}: {type(exc).__name__}: {exc}"[:300]) from None


def _json(resp: _Response, what: str, *, strict: bool = False) -> Any:
    if "json" not in resp.content_type.lower():
        raise _Fail(f"{what}: Content-Type is {resp.content_type or 'missing'!r}, not JSON")
    try:
        return canonical_decode(resp.body, max_bytes=MAX_RESPONSE) if strict else json.loads(resp.body)
    except (EncodingError, ValueError) as exc:
        raise _Fail(f"{what}: body is not valid JSON: {exc}"[:300]) from None


def _expect_200(resp: _Response, what: str) -> None:
    if resp.status != 200:
        raise _Fail(f"{what}: HTTP {resp.status} {resp.body[:120]!r}")


# -- identity -------------------------------------------------------------------

async def _check_identity(ctx: _Ctx, expect_key: VerifyKey | None, expect_key_id: str | None) -> str:
    resp = await _request(ctx, "GET", "/v1/notary")
    _expect_200(resp, "GET /v1/notary")
    doc = _json(resp, "GET /v1/notary", strict=True)
    if not isinstance(doc, dict) or not {"payloadType", "payload", "signatures"} <= set(doc):
        raise _Fail("the identity document is not a DSSE envelope {payloadType, payload, signatures}")
    if doc["payloadType"] != IDENTITY_TYPE:
        raise _Fail(f"payloadType is {doc['payloadType']!r}, not {IDENTITY_TYPE!r}")
    # Learn the key the document claims (unverified), then verify it with that key.
    try:
        claimed = json.loads(base64.b64decode(doc["payload"], validate=True))
        key = VerifyKey.from_b64(claimed["public_key"])
    except (ValueError, TypeError, KeyError, VerificationError) as exc:
        raise _Fail(f"the identity payload does not name an Ed25519 public_key: {exc}") from None
    if claimed.get("key_id") != key.key_id:
        raise _Fail(f"key_id {claimed.get('key_id')!r} does not match public_key (its id is {key.key_id})")
    try:
        ident = verify_identity(doc, key)
    except VerificationError as exc:
        raise _Fail(f"not signed by the key it names: {exc}") from None
    if ident.protocol != PROTOCOL:
        raise _Fail(f"protocol is {ident.protocol!r}, not {PROTOCOL!r}")
    skew = ident.signed_at - int(ctx.clock())
    if abs(skew) > MAX_SKEW:
        raise _Fail(f"signed_at is {skew:+d}s from now (max {MAX_SKEW}s): clock skew or a cached document")
    if expect_key is not None and key != expect_key:
        raise _Fail(f"the notary's key is {key.key_id}, not the expected {expect_key.key_id}")
    if expect_key_id is not None and key.key_id != expect_key_id:
        raise _Fail(f"the notary's key is {key.key_id}, not the expected {expect_key_id}")
    ctx.key, ctx.identity = key, ident
    ctx.limits = dict(ident.limits)
    return (f"signed by {key.key_id[:24]}… (the key it names, key id matches), protocol {ident.protocol}, "
            f"name {ident.name!r}, region {ident.region!r}, signed {abs(skew)}s {'ahead' if skew > 0 else 'ago'}")


async def _check_healthz(ctx: _Ctx) -> str:
    resp = await _request(ctx, "GET", "/healthz")
    _expect_200(resp, "GET /healthz")
    body = _json(resp, "GET /healthz")
    if not isinstance(body, dict) or body.get("status") != "ok":
        raise _Fail(f"GET /healthz: expected {{\"status\": \"ok\"}}, got {str(body)[:120]}")
    kid = body.get("key_id")
    if kid is not None and ctx.key is not None and kid != ctx.key.key_id:
        raise _Fail(f"GET /healthz names key {kid}, the identity document {ctx.key.key_id}")
    return "200 {\"status\": \"ok\"}" + (", key id matches" if kid is not None and ctx.key is not None else "")


async def _check_openapi(ctx: _Ctx) -> str:
    resp = await _request(ctx, "GET", "/v1/openapi.json")
    _expect_200(resp, "GET /v1/openapi.json")
    doc = _json(resp, "GET /v1/openapi.json")
    if not isinstance(doc, dict) or not str(doc.get("openapi", "")).startswith("3."):
        raise _Fail("not an OpenAPI 3 document (no \"openapi\": \"3.x\")")
    paths = doc.get("paths")
    missing = [p for p in ("/v1/notary", "/v1/observe") if not isinstance(paths, dict) or p not in paths]
    if missing:
        raise _Fail(f"the document does not list {', '.join(missing)}")
    return f"OpenAPI {doc['openapi']}, {len(doc['paths'])} paths"


# -- Oblivious HTTP ----------------------------------------------------------------

def _signed_ohttp_keys(ctx: _Ctx) -> bytes:
    if ctx.identity is None:
        raise _Skip("the identity check failed")
    if not ctx.identity.ohttp_keys:
        raise _Skip("the identity lists no ohttp_keys: not an Oblivious HTTP gateway")
    try:
        return base64.b64decode(ctx.identity.ohttp_keys, validate=True)
    except ValueError:
        raise _Fail("the identity's ohttp_keys is not base64") from None


async def _check_ohttp_keys(ctx: _Ctx) -> str:
    signed = _signed_ohttp_keys(ctx)
    resp = await _request(ctx, "GET", "/.well-known/ohttp-gateway")
    _expect_200(resp, "GET /.well-known/ohttp-gateway")
    if not resp.content_type.startswith(ohttp.KEYS_MEDIA_TYPE):
        raise _Fail(f"Content-Type is {resp.content_type!r}, not {ohttp.KEYS_MEDIA_TYPE}")
    if resp.body != signed:
        raise _Fail("the served key configurations differ from the ones the signed identity lists")
    try:
        configs = ohttp.decode_keys(signed)
    except OhttpError as exc:
        raise _Fail(f"ohttp_keys is not application/ohttp-keys: {exc}") from None
    usable = [c for c in configs if _usable(c)]
    if not usable:
        raise _Fail("no key configuration with X25519, HKDF-SHA256 and a supported AEAD")
    return f"{len(configs)} key configurations (ids {', '.join(str(c.key_id) for c in configs)}), as signed"


def _usable(config: ohttp.KeyConfig) -> bool:
    try:
        config.choose_suite()
    except OhttpError:
        return False
    return True


async def _check_ohttp_gateway(ctx: _Ctx) -> str:
    configs = [c for c in ohttp.decode_keys(_signed_ohttp_keys(ctx)) if _usable(c)]
    if not configs:
        raise _Skip("no usable key configuration (see ohttp-keys)")
    inner = bhttp.encode_request(bhttp.Request("GET", "https", urlsplit(ctx.base).netloc, "/v1/notary"))
    enc, client = ohttp.encapsulate_request(configs[0], inner)
    headers = {"Content-Type": ohttp.REQUEST_MEDIA_TYPE}
    resp = await _request(ctx, "POST", "/.well-known/ohttp-gateway", data=enc, headers=headers)
    _expect_200(resp, "POST /.well-known/ohttp-gateway")
    if not resp.content_type.startswith(ohttp.RESPONSE_MEDIA_TYPE):
        raise _Fail(f"Content-Type is {resp.content_type!r}, not {ohttp.RESPONSE_MEDIA_TYPE}")
    try:
        answer = bhttp.decode_response(ohttp.decapsulate_response(client, resp.body))
        ident = verify_identity(json.loads(answer.content), ctx.key) if ctx.key else None
    except (OhttpError, VerificationError, ValueError) as exc:
        raise _Fail(f"the encapsulated answer is unusable: {exc}"[:300]) from None
    if answer.status != 200 or ident is None:
        raise _Fail(f"the encapsulated GET /v1/notary answered {answer.status}")
    tampered = enc[:-1] + bytes([enc[-1] ^ 1])
    bad = await _request(ctx, "POST", "/.well-known/ohttp-gateway", data=tampered, headers=headers)
    if bad.status != 400:
        raise _Fail(f"a tampered encapsulation got HTTP {bad.status}, not 400")
    _json(bad, "tampered encapsulation")
    return f"key {configs[0].key_id}: the encrypted identity verifies; a tampered request is a 400"


# -- observations ---------------------------------------------------------------

def _observe_body(targets: Sequence[dict[str, Any]], nonce: str, **extra: Any) -> bytes:
    return json.dumps({"targets": list(targets), "nonce": nonce, **extra}).encode()


def _verify_answer(ctx: _Ctx, doc: Any, target: Target, nonce: str) -> list[Any]:
    """Check one observe answer for one target; return its verified observations."""
    if ctx.key is None:
        raise _Fail("no verified identity key to check signatures against (the identity check failed)")
    try:
        results = doc["results"]
        if not isinstance(results, list) or len(results) != 1:
            raise TypeError(f"expected 1 result, got {len(results) if isinstance(results, list) else 'none'}")
        result = results[0]
        envelopes = result["envelopes"]
        if not isinstance(envelopes, list) or not envelopes:
            raise TypeError("envelopes is not a non-empty list")
    except (KeyError, TypeError, IndexError) as exc:
        raise _Fail(f"malformed answer: {exc}") from None
    if len(envelopes) > MAX_ENVELOPES:
        raise _Fail(f"{len(envelopes)} envelopes for one target (clients accept at most {MAX_ENVELOPES})")
    if result.get("target") != target.to_json():
        raise _Fail(f"result names target {result.get('target')!r}, asked for {target.to_json()!r}")
    try:
        out = verify_answer(envelopes, result.get("freshness"), ctx.key, nonce=nonce)
    except VerificationError as exc:
        raise _Fail(f"the answer does not verify against the identity key: {exc}") from None
    now = int(ctx.clock())
    for i, obs in enumerate(out):
        if obs.target != target:
            raise _Fail(f"envelope {i} is for {obs.target} (sni {obs.target.sni}), not {target} (sni {target.sni})")
        if abs(obs.signed_at - now) > MAX_SKEW:
            raise _Fail(f"envelope {i}: signed_at is {obs.signed_at - now:+d}s from now (max {MAX_SKEW}s)")
        if obs.observed_at > obs.signed_at:
            raise _Fail(f"envelope {i}: observed_at is after signed_at")
    return out


def _describe(observations: Sequence[Any]) -> str:
    parts = []
    for o in observations:
        if o.status == "ok":
            parts.append(f"{o.ip} ok {o.pin}")
        else:
            parts.append(f"{o.ip or '-'} {o.status}" + (f" ({o.detail})" if o.detail else ""))
    return "; ".join(parts)


async def _check_observe_post(ctx: _Ctx, target: Target) -> str:
    nonce = secrets.token_urlsafe(24)
    resp = await _request(ctx, "POST", "/v1/observe", data=_observe_body([target.to_json()], nonce),
                          headers={"Content-Type": "application/json"})
    _expect_200(resp, "POST /v1/observe")
    obs = _verify_answer(ctx, _json(resp, "POST /v1/observe", strict=True), target, nonce)
    return f"{len(obs)} envelope(s) verify against the identity key, nonce echoed, target {target}: {_describe(obs)}"


async def _check_observe_get(ctx: _Ctx, target: Target) -> str:
    nonce = secrets.token_urlsafe(24)
    path = f"/v1/observe/{quote(target.host, safe='')}/{target.port}?nonce={nonce}"
    if target.sni is not None and target.sni != target.host:
        path += f"&sni={quote(target.sni, safe='')}"
    resp = await _request(ctx, "GET", path)
    _expect_200(resp, "GET /v1/observe")
    obs = _verify_answer(ctx, _json(resp, "GET /v1/observe", strict=True), target, nonce)
    return f"{len(obs)} envelope(s) verify, nonce echoed, target {target}"


def _covered(address: str, nets: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    ip = ipaddress.ip_address(address)
    ips = [ip] + ([ip.ipv4_mapped] if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else [])
    return any(a.version == n.version and a in n for a in ips for n in nets)


async def _check_freshness(ctx: _Ctx, target: Target) -> str:
    nonces = [secrets.token_urlsafe(24) for _ in range(2)]
    resps = await asyncio.gather(*(
        _request(ctx, "POST", "/v1/observe", data=_observe_body([target.to_json()], n),
                 headers={"Content-Type": "application/json"}) for n in nonces))
    docs = []
    for r, n in zip(resps, nonces):
        _expect_200(r, "POST /v1/observe")
        doc = _json(r, "POST /v1/observe", strict=True)
        _verify_answer(ctx, doc, target, n)
        docs.append(doc["results"][0])
    try:
        verify_answer(docs[0]["envelopes"], docs[0].get("freshness"), ctx.key, nonce=nonces[1])  # type: ignore[arg-type]
    except VerificationError:
        pass
    else:
        raise _Fail("an answer verified under another request's nonce")
    same_obs = docs[0]["envelopes"] == docs[1]["envelopes"]
    same_batch = docs[0]["freshness"].get("statement") == docs[1]["freshness"].get("statement")
    return (f"each answer bound to its own nonce; observation signed once: {'yes' if same_obs else 'no'}; "
            f"one statement for both: {'yes' if same_batch else 'no'}")


async def _check_refusal(ctx: _Ctx, address: str, expect_allowed: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str:
    target = Target.parse(address, ctx.canary_port)
    nonce = secrets.token_urlsafe(24)
    before = ctx.canary.connections if ctx.canary else 0
    resp = await _request(ctx, "POST", "/v1/observe", data=_observe_body([target.to_json()], nonce),
                          headers={"Content-Type": "application/json"})
    _expect_200(resp, f"POST /v1/observe {target}")
    obs = _verify_answer(ctx, _json(resp, "POST /v1/observe", strict=True), target, nonce)
    touched = (ctx.canary.connections if ctx.canary else 0) - before
    allowed = _covered(address, expect_allowed)
    statuses = sorted({o.status for o in obs})
    if statuses == ["blocked_by_policy"]:
        if any(o.chain or o.spki_sha256 or o.tls_version for o in obs):
            raise _Fail("blocked_by_policy observation carries TLS data")
        if touched:
            raise _Fail(f"answered blocked_by_policy for {target}, but connected to this run's listener there "
                        f"({touched} connection(s))")
        note = " (although --expect-allowed covers it)" if allowed else ""
        return f"{target}: signed blocked_by_policy without connecting: {obs[0].detail}{note}"
    seen = f"; this run's listener saw {touched} connection(s)"
    if allowed:
        return f"allowed by operator (--expect-allowed): {target}: signed observation, status {', '.join(statuses)}{seen}"
    raise _Fail(f"the notary observed {target}, a loopback address, instead of refusing it (status "
                f"{', '.join(statuses)}{seen}); if its operator allowed this network on purpose, pass --expect-allowed CIDR")


async def _check_error(ctx: _Ctx, what: str, data: bytes, want: int, *, code: str | None = None) -> str:
    resp = await _request(ctx, "POST", "/v1/observe", data=data, headers={"Content-Type": "application/json"})
    if resp.status != want:
        raise _Fail(f"{what}: expected HTTP {want}, got {resp.status} {resp.body[:120]!r}")
    body = _json(resp, f"{what} (HTTP {resp.status})")
    if not isinstance(body, dict) or not isinstance(body.get("error"), str) or not isinstance(body.get("reason"), str):
        raise _Fail(f"{what}: the error body is not {{\"error\": str, \"reason\": str}}: {resp.body[:120]!r}")
    if code is not None and body["error"] != code:
        return f"HTTP {want} {{\"error\": {body['error']!r}}} (expected code {code!r}; accepted)"
    return f"HTTP {want} {{\"error\": {body['error']!r}}}"


def _refused_target(ctx: _Ctx) -> dict[str, Any]:
    """The target of the limit checks (refused before any probe): this run's own listener."""
    return {"host": "127.0.0.1", "port": ctx.canary_port}


async def _check_too_many(ctx: _Ctx) -> str:
    n = ctx.limits.get("max_targets", DEFAULT_MAX_TARGETS)
    body = _observe_body([_refused_target(ctx)] * (n + 1), secrets.token_urlsafe(24))
    max_body = ctx.limits.get("max_body_bytes", DEFAULT_MAX_BODY)
    if len(body) > max_body:
        raise _Skip(f"{n + 1} targets do not fit in the {max_body}-byte body limit")
    return f"{n + 1} targets: " + await _check_error(ctx, "too many targets", body, 400)


async def _check_too_large(ctx: _Ctx) -> str:
    max_body = ctx.limits.get("max_body_bytes", DEFAULT_MAX_BODY)
    pad = "x" * (max_body + 1024)
    body = _observe_body([_refused_target(ctx)], secrets.token_urlsafe(24), pad=pad)
    return f"{len(body)} bytes: " + await _check_error(ctx, "oversized body", body, 413)


async def _check_bad_nonce(ctx: _Ctx) -> str:
    body = _observe_body([_refused_target(ctx)], "short")
    return await _check_error(ctx, "bad nonce", body, 400, code="bad_nonce")


async def _check_bad_json(ctx: _Ctx) -> str:
    return await _check_error(ctx, "malformed JSON", b'{"targets": [{"host": ', 400)


# -- driver ---------------------------------------------------------------------

async def run_conformance(
    url: str,
    *,
    target: Target | None = None,
    expect_allowed: Sequence[str] = (),
    public_key: str | None = None,
    key_id: str | None = None,
    timeout: float = 10.0,
    session: aiohttp.ClientSession | None = None,
    clock: Callable[[], float] = time.time,
) -> list[CheckResult]:
    """Run every check against the notary at ``url``; one :class:`CheckResult` per check.

    Raises :class:`~notary.errors.InputError` for a bad ``url``, ``expect_allowed``
    or ``public_key``; a misbehaving notary is reported, never raised.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InputError(f"not a notary URL: {url!r} (expected http(s)://HOST:PORT)")
    try:
        nets = [ipaddress.ip_network(c, strict=False) for c in expect_allowed]
    except ValueError as exc:
        raise InputError(f"--expect-allowed: {exc}") from None
    try:
        expect_key = VerifyKey.from_b64(public_key) if public_key else None
    except VerificationError:
        raise InputError("--public-key takes a base64 Ed25519 public key") from None

    own = session is None
    canary = _Canary()
    await canary.__aenter__()
    sess = session or aiohttp.ClientSession()
    ctx = _Ctx(url.rstrip("/"), sess, timeout, clock, canary=canary)
    out: list[CheckResult] = []

    async def run(name: str, coro: Any) -> bool:
        try:
            detail = await coro
        except _Skip as exc:
            out.append(CheckResult(name, "skip", str(exc)))
            return True
        except _Fail as exc:
            out.append(CheckResult(name, "fail", str(exc)))
            return False
        except Exception as exc:  # a check must never crash the run
            out.append(CheckResult(name, "fail", f"unexpected {type(exc).__name__}: {exc}"[:300]))
            return False
        out.append(CheckResult(name, "pass", detail))
        return True

    try:
        await run("identity", _check_identity(ctx, expect_key, key_id))
        if out[-1].status == "fail" and ("ClientConnectorError" in out[-1].detail or "no answer within" in out[-1].detail):
            out.append(CheckResult("reach", "fail", f"cannot talk to {ctx.base}; the other checks were not run"))
            return out
        await run("healthz", _check_healthz(ctx))
        await run("openapi", _check_openapi(ctx))
        if target is None:
            note = ("no --target given: the observation checks need a public target you chose (conformance picks "
                    "only its own loopback listener, for the refusal checks a correct notary never connects to)")
            out.append(CheckResult("observe", "skip", note))
            out.append(CheckResult("observe-get", "skip", note))
            out.append(CheckResult("freshness", "skip", note))
        else:
            await run("observe", _check_observe_post(ctx, target))
            await run("observe-get", _check_observe_get(ctx, target))
            await run("freshness", _check_freshness(ctx, target))
        for name, address in REFUSAL_TARGETS:
            await run(name, _check_refusal(ctx, address, nets))
        await run("limit too-many-targets", _check_too_many(ctx))
        await run("limit body-too-large", _check_too_large(ctx))
        await run("limit bad-nonce", _check_bad_nonce(ctx))
        await run("limit bad-json", _check_bad_json(ctx))
        await run("ohttp-keys", _check_ohttp_keys(ctx))
        await run("ohttp-gateway", _check_ohttp_gateway(ctx))
        return out
    finally:
        if own:
            await sess.close()
        await canary.__aexit__()


def render(url: str, results: Sequence[CheckResult]) -> str:
    width = max(len(r.name) for r in results)
    lines = [f"conformance of {url}"]
    for r in results:
        lines.append(f"{r.status.upper():4}  {r.name.ljust(width)}  {r.detail}")
    counts = {s: sum(r.status == s for r in results) for s in ("pass", "fail", "skip")}
    lines.append(f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped")
    return "\n".join(lines)


def _cmd_conformance(args: argparse.Namespace) -> int:
    from client.cli._common import EX_USAGE, Exit, host_port

    target = None
    if args.target:
        try:
            host, port = host_port(args.target, 443)
            target = Target.parse(host, port, args.sni)
        except (argparse.ArgumentTypeError, InputError) as exc:
            raise Exit(EX_USAGE, f"parallax conformance: --target: {exc}") from None
    elif args.sni:
        raise Exit(EX_USAGE, "parallax conformance: --sni needs --target")
    try:
        results = eventloop.run(run_conformance(
            args.url, target=target, expect_allowed=args.expect_allowed, public_key=args.public_key,
            key_id=args.key_id, timeout=args.timeout,
        ))
    except InputError as exc:
        raise Exit(EX_USAGE, f"parallax conformance: {exc}") from None
    failed = any(r.status == "fail" for r in results)
    if args.json:
        print(json.dumps({"url": args.url, "ok": not failed, "checks": [r.to_json() for r in results]}, indent=2))
    else:
        print(render(args.url, results))
    sys.stdout.flush()
    return 1 if failed else 0


def add_conformance_command(sub: Any) -> None:
    """Register ``parallax conformance``."""
    p = sub.add_parser(
        "conformance", help="check that a live notary speaks the protocol correctly",
        description="Checks a live notary. It is asked to observe only --target and 127.0.0.1 (also written "
                    "::ffff:127.0.0.1) on the ephemeral port of a TCP listener this run opens on 127.0.0.1, "
                    "which a correct notary refuses without connecting; no private-range address and no "
                    "well-known port. Redirects are never followed.")
    p.add_argument("url", metavar="URL", help="the notary's base URL, e.g. http://notary.example:8443")
    p.add_argument("--target", metavar="HOST:PORT",
                   help="a public target you chose for the observation checks (skipped without it; the refusal "
                        "checks use only this run's own loopback listener, which a notary must refuse)")
    p.add_argument("--sni", help="SNI for --target (default: its host name)")
    p.add_argument("--expect-allowed", action="append", default=[], metavar="CIDR",
                   help="the operator allowed this network (--allow-network): the refusal checks ask for "
                        "127.0.0.1 (and ::ffff:127.0.0.1) on the port of a listener this run opens on "
                        "127.0.0.1, so probing it is not a failure if CIDR covers 127.0.0.1")
    p.add_argument("--public-key", help="the notary's expected base64 Ed25519 public key")
    p.add_argument("--key-id", help="the notary's expected key id (ed25519:...)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=_cmd_conformance)
