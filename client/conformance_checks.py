"""The checks of ``parallax conformance``, one coroutine each (the catalogue and order: :mod:`client.conformance`).

Each ``_check_*`` takes the run's context, returns its one-line detail on a pass
and raises ``_Fail`` or ``_Skip`` otherwise: the identity document, ``/healthz``
and the OpenAPI document; the Oblivious HTTP keys and gateway; observations
(``POST`` and ``GET``, verified against the identity key, at most
``MAX_ENVELOPES`` envelopes per target and ``MAX_SKEW`` seconds of clock skew),
nonce-bound freshness, the loopback refusals, and the limit answers
(400, 413, each with a JSON ``{"error", "reason"}`` body).
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import secrets
from typing import Any, Sequence
from urllib.parse import quote, urlsplit

from client.conformance_harness import (
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_TARGETS,
    MAX_ENVELOPES,
    MAX_SKEW,
    _Ctx,
    _Fail,
    _Skip,
    _expect_200,
    _json,
    _request,
)
from notary.core import bhttp, ohttp
from notary.core import (
    IDENTITY_TYPE,
    PROTOCOL,
    Target,
    VerifyKey,
    verify_answer,
    verify_identity,
)
from notary.errors import OhttpError, VerificationError

# No public names: client.conformance runs these checks (and re-exports them).
__all__: list[str] = []


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
