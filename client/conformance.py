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
import ipaddress
import json
import sys
import time
from typing import Any, Callable, Sequence
from urllib.parse import urlsplit

import aiohttp

# The checks and what they run on live in two parts; this module is the command's
# public face: the catalogue (the docstring above), the driver, the report and the CLI.
from client.conformance_harness import (
    CheckResult,
    DEFAULT_MAX_BODY as DEFAULT_MAX_BODY,
    DEFAULT_MAX_TARGETS as DEFAULT_MAX_TARGETS,
    MAX_ENVELOPES as MAX_ENVELOPES,
    MAX_RESPONSE as MAX_RESPONSE,
    MAX_SKEW as MAX_SKEW,
    REFUSAL_TARGETS,
    _Canary,
    _Ctx,
    _Fail,
    _Response as _Response,
    _Skip,
    _expect_200 as _expect_200,
    _json as _json,
    _request as _request,
)
from client.conformance_checks import (
    _check_bad_json,
    _check_bad_nonce,
    _check_error as _check_error,
    _check_freshness,
    _check_healthz,
    _check_identity,
    _check_observe_get,
    _check_observe_post,
    _check_ohttp_gateway,
    _check_ohttp_keys,
    _check_openapi,
    _check_refusal,
    _check_too_large,
    _check_too_many,
    _covered as _covered,
    _describe as _describe,
    _observe_body as _observe_body,
    _refused_target as _refused_target,
    _signed_ohttp_keys as _signed_ohttp_keys,
    _usable as _usable,
    _verify_answer as _verify_answer,
)
from notary import eventloop
from notary.core import Target, VerifyKey
from notary.errors import InputError, VerificationError

__all__ = ["add_conformance_command", "run_conformance", "CheckResult", "REFUSAL_TARGETS"]


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
