"""Lab actors: small processes the network-namespace lab runs inside its hosts.

Run as ``ip netns exec NS python -m tests.lab.actors COMMAND ...``:

``site --listen IP:PORT --name NAME --org ORG``
    a TLS site (``client.devtools.tls_site``) with a fresh certificate for NAME
    issued by a fresh CA called ORG;
``intercept --listen IP:PORT --upstream IP:PORT --sni NAME --org ORG [--cert-out FILE]``
    a TLS-terminating interceptor (``client.devtools.interceptor``): a certificate
    forged for NAME towards the client, real TLS towards the upstream site;
``httptamper --listen IP:PORT [--swap-chain DER] [--flip IP ...]``
    a transparent HTTP proxy for notary traffic that was REDIRECTed to it: it
    forwards each request to the original destination (``SO_ORIGINAL_DST``) and
    alters the observation envelopes in the answer: for notaries listed with
    ``--flip`` it flips one byte of each signed payload; for the others it swaps
    the observed certificate for the one in ``--swap-chain`` (so that, were
    signatures not checked, the notaries would appear to agree with a forged key);
``verify HOST:PORT --bundle FILE [--timeout S] [--wait-all]``
    the library call ``verify_with_notaries`` from inside a namespace; prints the
    verdict as JSON and exits like ``parallax check``.

Servers print one JSON line ``{"ready": true, ...}`` on stdout once they listen,
log what they do on stderr, and run until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import signal
import socket
import ssl
import struct
import sys
from pathlib import Path
from typing import Any

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _ready(**info: Any) -> None:
    print(json.dumps({"ready": True, **info}), flush=True)


def make_cert(name: str, org: str) -> tuple[ssl.SSLContext, bytes]:
    """A server context for ``name`` from a fresh CA named ``org``, and the leaf's DER."""
    import trustme
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    ca = trustme.CA(organization_name=org)
    leaf = ca.issue_cert(name)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(ctx)
    der = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).public_bytes(Encoding.DER)
    return ctx, der


def _pin(der: bytes) -> dict[str, str]:
    from notary.core import pin_from_spki_hex, spki_sha256

    spki = spki_sha256(der)
    return {"spki_sha256": spki, "pin": pin_from_spki_hex(spki)}


async def _until_stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _site(args: argparse.Namespace) -> None:
    from client.devtools import tls_site

    ctx, der = make_cert(args.name, args.org)
    host, port = _addr(args.listen)
    async with tls_site(ctx, host=host, port=port) as site:
        _ready(listen=f"{host}:{site.port}", **_pin(der))
        await _until_stopped()


async def _intercept(args: argparse.Namespace) -> None:
    from client.devtools import interceptor

    ctx, der = make_cert(args.sni, args.org)
    if args.cert_out:
        Path(args.cert_out).write_bytes(der)
    host, port = _addr(args.listen)
    async with interceptor(ctx, _addr(args.upstream), sni=args.sni, host=host, port=port) as me:
        _ready(listen=f"{host}:{me.port}", **_pin(der))
        await _until_stopped()


# -- httptamper -------------------------------------------------------------------------

def original_destination(sock: Any) -> tuple[str, int]:
    """The address a REDIRECTed connection was sent to (netfilter's SO_ORIGINAL_DST)."""
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port = struct.unpack("!H", raw[2:4])[0]
    return socket.inet_ntoa(raw[4:8]), port


def _flip(env: dict[str, Any]) -> dict[str, Any]:
    payload = bytearray(base64.b64decode(env["payload"]))
    payload[len(payload) // 2] ^= 0x01
    return {**env, "payload": base64.b64encode(bytes(payload)).decode()}


def _swap(env: dict[str, Any], der: bytes) -> dict[str, Any]:
    from notary.core import canonical_decode, canonical_encode, leaf_sha256, pin_from_spki_hex, spki_sha256
    from notary.core.pins import summarize_leaf

    p = canonical_decode(base64.b64decode(env["payload"]))
    if p.get("status") != "ok":
        return _flip(env)
    spki = spki_sha256(der)
    p.update(chain=[base64.b64encode(der).decode()], spki_sha256=spki, pin=pin_from_spki_hex(spki),
             leaf_sha256=leaf_sha256(der), leaf=summarize_leaf(der).to_json())
    return {**env, "payload": base64.b64encode(canonical_encode(p)).decode()}


async def _httptamper(args: argparse.Namespace) -> None:
    import aiohttp
    from aiohttp import web

    swap_der = Path(args.swap_chain).read_bytes() if args.swap_chain else None
    flip = set(args.flip)
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    async def handle(request: web.Request) -> web.StreamResponse:
        sock = request.transport.get_extra_info("socket") if request.transport else None
        ip, port = original_destination(sock)
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "accept")}
        async with session.request(request.method, f"http://{ip}:{port}{request.path_qs}",
                                   data=body or None, headers=headers) as r:
            data, status = await r.read(), r.status
            ctype = r.headers.get("Content-Type", "application/json")
        if request.path.startswith("/v1/observe") and status == 200:
            doc = json.loads(data)
            mode = "flip" if ip in flip or swap_der is None else "swap"
            for result in doc.get("results", []):
                result["envelopes"] = [_flip(e) if mode == "flip" else _swap(e, swap_der)  # type: ignore[arg-type]
                                       for e in result.get("envelopes", [])]
            data = json.dumps(doc).encode()
            _log(f"tampered {request.method} {request.path} from {ip}:{port} mode={mode}")
        else:
            _log(f"passed {request.method} {request.path} from {ip}:{port} status={status}")
        return web.Response(body=data, status=status, headers={"Content-Type": ctype})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, port = _addr(args.listen)
    site = web.TCPSite(runner, host, port)
    await site.start()
    try:
        _ready(listen=f"{host}:{port}")
        await _until_stopped()
    finally:
        await session.close()
        await runner.cleanup()


# -- verify -----------------------------------------------------------------------------

async def _verify(args: argparse.Namespace) -> int:
    from client.api import verify_with_notaries
    from client.cli import exit_code_for

    host, port = _addr(args.target)
    verdict = await verify_with_notaries(host, port, bundle=args.bundle, timeout=args.timeout, wait_all=args.wait_all)
    print(json.dumps(verdict.to_json()), flush=True)
    return exit_code_for(verdict)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.lab.actors")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("site")
    s.add_argument("--listen", required=True)
    s.add_argument("--name", required=True)
    s.add_argument("--org", default="Lab site CA")
    i = sub.add_parser("intercept")
    i.add_argument("--listen", required=True)
    i.add_argument("--upstream", required=True)
    i.add_argument("--sni", required=True)
    i.add_argument("--org", default="Interceptor CA")
    i.add_argument("--cert-out")
    h = sub.add_parser("httptamper")
    h.add_argument("--listen", required=True)
    h.add_argument("--swap-chain")
    h.add_argument("--flip", action="append", default=[])
    v = sub.add_parser("verify")
    v.add_argument("target")
    v.add_argument("--bundle", required=True)
    v.add_argument("--timeout", type=float, default=10.0)
    v.add_argument("--wait-all", action="store_true")
    args = p.parse_args(argv)
    if args.cmd == "verify":
        return asyncio.run(_verify(args))
    runner = {"site": _site, "intercept": _intercept, "httptamper": _httptamper}[args.cmd]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(runner(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
