"""Server runner for the benchmarks: ``python bench/_serve.py ROLE 'JSON spec'``.

Roles (all on loopback):

* ``sites``   ``count`` local TLS sites (client.devtools.tls_site), one shared
              certificate (make_cert_context, ECDSA) for ``names``; or, with
              ``acme``, a TLS-ALPN-01 challenge certificate (open-mpic benchmark).
              All on ``host`` (127.0.0.1), or one site on each loopback
              address of ``hosts`` (127.0.0.0/8 only).
* ``cluster`` ``n`` real notaries (client.cluster.local_cluster: served as
              ``parallax serve`` serves, behind the connection guard),
              StaticResolver ``table``, rate limit and per-client connection
              caps out of the way (``max_per_client``, default 4096).
* ``relay``   one more notary, in its own process, that is also an Oblivious
              HTTP relay for the bundle at ``bundle`` (loopback allowed).
* ``static``  a bare aiohttp handler answering POST /v1/observe with fixed bytes.
* ``mpic``    ``n`` open-mpic-core DCV perspectives behind aiohttp (POST /dcv).

Prints ``READY {json}`` once listening; exits when stdin closes or after
``lifetime`` seconds, whichever comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from notary import eventloop  # noqa: E402

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


def _ready(info: dict[str, Any]) -> None:
    info.setdefault("pid", os.getpid())
    print("READY " + json.dumps(info), flush=True)


async def _wait_end(lifetime: float) -> None:
    """Until stdin reaches EOF (the parent is done or gone) or ``lifetime`` seconds pass.

    Then silences asyncio's logger: connections still open at shutdown (a site's
    handlers, cancelled) are expected, not errors worth a traceback.
    """
    loop = asyncio.get_running_loop()
    done = asyncio.Event()

    def watch() -> None:
        try:
            sys.stdin.read()
        finally:
            loop.call_soon_threadsafe(done.set)

    threading.Thread(target=watch, daemon=True).start()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(lifetime):
            await done.wait()
    import logging

    logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def _acme_context(name: str, key_auth_hash_hex: str, workdir: Path) -> Any:
    """A server context presenting an ACME TLS-ALPN-01 challenge certificate (RFC 8737)."""
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    ext_value = b"\x04\x20" + bytes.fromhex(key_auth_hash_hex)  # DER OCTET STRING of the SHA-256
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31"), ext_value), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = workdir / "acme.pem", workdir / "acme.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_path, key_path)
    ctx.set_alpn_protocols(["acme-tls/1"])
    return ctx


async def role_sites(spec: dict[str, Any], workdir: Path) -> None:
    from client.devtools import make_cert_context, tls_site

    if spec.get("acme"):
        ctx = _acme_context(spec["acme"]["name"], spec["acme"]["hash"], workdir)
    else:
        ctx = make_cert_context(*spec.get("names", ["bench.test"]))
    ports = spec.get("ports") or [0] * int(spec.get("count", 1))
    host = spec.get("host", "127.0.0.1")
    hosts = spec.get("hosts") or [host] * len(ports)
    if len(hosts) != len(ports) or not all(ipaddress.ip_address(h) in LOOPBACK for h in hosts):
        raise SystemExit("sites: 'hosts' must be one 127.0.0.0/8 address a site")
    async with contextlib.AsyncExitStack() as stack:
        sites = [await stack.enter_async_context(tls_site(ctx, host=h, port=p)) for h, p in zip(hosts, ports)]
        _ready({"ports": [s.port for s in sites], "host": host, "hosts": hosts})
        await _wait_end(spec["lifetime"])


async def role_cluster(spec: dict[str, Any], workdir: Path) -> None:
    from client.cluster import local_cluster
    from client.devtools import StaticResolver

    from notary.connguard import ConnLimits, raise_fd_limit

    resolver = StaticResolver(spec.get("table", {}))
    # Served as `parallax serve` serves (the connection guard, direct routes), with its descriptor
    # limit raised as `serve` raises it.  A benchmark's load comes from one address but stands for
    # many clients, so the guard's per-client and per-network caps are lifted ("max_per_client",
    # default 4096), as the rate limit is; its accounting per connection runs all the same.
    raise_fd_limit()
    per_client = int(spec.get("max_per_client", 4096))
    limits = ConnLimits(max_per_client=per_client, max_pending_per_net=per_client)
    async with local_cluster(int(spec.get("n", 1)), workdir / "cluster", resolver=resolver,
                             ttl=int(spec.get("ttl", 300)), rate=float(spec.get("rate", 1e6)),
                             conn_limits=limits) as cluster:
        _ready({"urls": cluster.urls, "bundle": str(cluster.bundle_path), "db_dir": str(workdir / "cluster")})
        await _wait_end(spec["lifetime"])


async def role_relay(spec: dict[str, Any], workdir: Path) -> None:
    from aiohttp import web

    from client.bundle import load_bundle
    from notary.config import NotaryConfig
    from notary.core import AddressPolicy, SigningKey, parse_networks
    from notary.relay import RelayConfig
    from notary.server import create_app

    bundle = load_bundle(spec["bundle"])
    policy = AddressPolicy(parse_networks(["127.0.0.0/8"]), None)
    key = SigningKey.generate()
    relay = RelayConfig({e.key_id: e.url for e in bundle.notaries}, policy, rate_per_client=1e6, burst_per_client=10**6)
    app = create_app(NotaryConfig(data_dir=workdir, name="relay", region="local-relay", policy=policy,
                                  rate_per_client=1e6, burst_per_client=10**6), key, relay=relay)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        _ready({"url": url, "entry": {"name": "relay", "url": url, "region": "local-relay", "key_id": key.key_id,
                                      "public_key": key.verify_key.b64, "relay": True}})
        await _wait_end(spec["lifetime"])
    finally:
        await runner.cleanup()


async def role_static(spec: dict[str, Any], workdir: Path) -> None:
    from aiohttp import web

    body = Path(spec["body_file"]).read_bytes()

    async def observe(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/observe", observe)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        _ready({"url": f"http://127.0.0.1:{port}", "bytes": len(body)})
        await _wait_end(spec["lifetime"])
    finally:
        await runner.cleanup()


async def role_mpic(spec: dict[str, Any], workdir: Path) -> None:
    import logging

    from aiohttp import web
    from open_mpic_core import DcvCheckRequest, MpicDcvChecker

    logging.getLogger("open_mpic_core").setLevel(logging.WARNING)
    runners, urls = [], []
    for _ in range(int(spec.get("n", 5))):
        checker = MpicDcvChecker(http_client_timeout=10)

        async def dcv(request: web.Request, checker: MpicDcvChecker = checker) -> web.Response:
            req = DcvCheckRequest.model_validate_json(await request.read())
            resp = await checker.check_dcv(req)
            return web.Response(body=resp.model_dump_json(), content_type="application/json")

        app = web.Application()
        app.router.add_post("/dcv", dcv)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        urls.append(f"http://127.0.0.1:{runner.addresses[0][1]}")
    try:
        _ready({"urls": urls})
        await _wait_end(spec["lifetime"])
    finally:
        for r in runners:
            await r.cleanup()


ROLES = {"sites": role_sites, "cluster": role_cluster, "static": role_static, "mpic": role_mpic, "relay": role_relay}


def main() -> None:
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # run the clean-up below on SIGTERM too
    role, spec = sys.argv[1], json.loads(sys.argv[2])
    spec.setdefault("lifetime", 900.0)
    workdir = Path(tempfile.mkdtemp(prefix=f"parallax-bench-{role}-"))
    try:
        eventloop.run(ROLES[role](spec, workdir))
    except KeyboardInterrupt:
        pass
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
