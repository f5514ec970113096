"""Notary commands: ``keygen``, ``serve``, ``notary-info``, ``ohttp-rotate``.

The logic lives in :mod:`notary` (keys, config, server, identity file); this
module only turns flags into calls.  ``notary-info URL`` fetches and checks a
live notary's signed identity, a client-side concern.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from client.cli._common import EX_USAGE, Exit, host_port, passphrase
from notary import eventloop
from notary.errors import EncodingError, InputError, RemoteError, VerificationError

__all__ = ["add_notary_commands", "build_config", "fetch_entry"]


def _listen(text: str) -> tuple[str, int]:
    return host_port(text)


def _region(text: str) -> str:
    """A region name: not empty (an empty ``$PARALLAX_REGION`` must not pass as a region)."""
    text = text.strip()
    if not text or len(text) > 64 or not text.isprintable():
        raise argparse.ArgumentTypeError("--region must be a region name (1-64 printable characters)")
    return text


def _relay_factor(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError("--relay-peer-factor takes a whole number from 1 to 1000")
    return int(text)


def _workers(text: str) -> int:
    from notary.workers import MAX_WORKERS

    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"--workers takes a whole number from 1 to {MAX_WORKERS}")
    return int(text)


def _cmd_keygen(args: argparse.Namespace) -> int:
    from notary.keyfile import generate_encrypted_key_file, generate_key_file

    if args.encrypt:
        key = generate_encrypted_key_file(args.data_dir, passphrase(confirm=True))
    else:
        key = generate_key_file(args.data_dir)
    print(json.dumps({"key_id": key.key_id, "public_key": key.verify_key.b64}))
    return 0


def build_config(args: argparse.Namespace, *, url: str | None) -> Any:
    """The :class:`notary.config.NotaryConfig` for ``serve``'s flags."""
    from notary.config import NotaryConfig
    from notary.core import AddressPolicy, Target, parse_networks
    from notary.prober import ProbeLimits
    from notary.retention import RetentionLimits
    from notary.service import ServiceLimits

    ports: frozenset[int] | None
    if "any" in args.allow_port:
        ports = None
    else:
        try:
            ports = frozenset({443, *(int(p) for p in args.allow_port)})
        except ValueError:
            raise InputError("--allow-port takes a port number or 'any'") from None
    try:
        watch = tuple(Target.parse(*host_port(w, 443)) for w in args.watch)
    except argparse.ArgumentTypeError as exc:  # raised outside argparse: still a usage error
        raise InputError(f"--watch: {exc}") from None
    return NotaryConfig(
        data_dir=Path(args.data_dir), name=args.name, region=args.region, url=url,
        country=args.country, rir=args.rir,
        policy=AddressPolicy(parse_networks(args.allow_network), ports),
        probe_limits=ProbeLimits(connect_timeout=args.timeout, handshake_timeout=args.timeout),
        service_limits=ServiceLimits(ttl=args.ttl),
        max_targets=args.max_targets, rate_per_client=args.rate, burst_per_client=args.burst,
        watch=watch, rescan_interval=args.rescan_interval,
        trusted_proxies=parse_networks(args.trusted_proxy),
        relay_peers=parse_networks(args.relay_peer), relay_peer_factor=args.relay_peer_factor,
        retention=RetentionLimits(max_age_days=args.retain_days, max_bytes=args.max_store_bytes),
    )


def _cmd_serve(args: argparse.Namespace) -> int:
    from notary.datadir import DataDirLock
    from notary.identity_file import bundle_entry, write_identity
    from notary.keyfile import generate_key_file, key_path, load_key_file
    from notary.server import listen_url, run
    from notary.workers import default_workers, serve_workers

    host, port = args.listen
    if args.init and not key_path(args.data_dir).exists():
        generate_key_file(args.data_dir)
        logging.getLogger("parallax.notary").info("generated a new notary key in %s", args.data_dir)
    lock = DataDirLock(args.data_dir) if Path(args.data_dir).is_dir() else None
    if lock is not None:
        lock.acquire()  # before anything is read or written: one serve per data dir
    try:
        key = load_key_file(args.data_dir)
        # With --listen HOST:0 the port is known only once bound: the URL is made then.
        url = args.url or (listen_url(host, port) if port else None)
        if not args.url and host in ("0.0.0.0", "::", ""):
            print(f"parallax serve: warning: advertising {url or listen_url(host, port)}, which clients cannot reach; "
                  "pass --url", file=sys.stderr)
        config = build_config(args, url=url)
        relay = _relay_config(args, config)
        workers = args.workers if args.workers is not None else default_workers()

        def record(addr: tuple[str, int]) -> None:
            # Only once the listener is bound: a serve that cannot bind changes nothing on disk.
            # Before any request is answered, so a passing health check implies the entry exists.
            entry = bundle_entry(config.name, url or listen_url(host, addr[1]), config.region, key.key_id,
                                 key.verify_key.b64, config.country, config.rir, relay=relay is not None)
            write_identity(Path(args.data_dir), entry)
            if args.export_entry:
                export = Path(args.export_entry)
                export.parent.mkdir(parents=True, exist_ok=True)
                tmp = export.with_name(f".{export.name}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps(entry, indent=2) + "\n")
                os.replace(tmp, export)  # a reader sees the whole entry or none

        def announce(addr: tuple[str, int]) -> None:
            # Once connections are accepted (every worker's, with --workers).
            listening = f"{'[' + addr[0] + ']' if ':' in addr[0] else addr[0]}:{addr[1]}"
            print(json.dumps({"serving": url or listen_url(host, addr[1]), "key_id": key.key_id,
                              "region": config.region, "listening": listening, "workers": workers,
                              "loop": eventloop.chosen()}), flush=True)

        def record_and_announce(addr: tuple[str, int]) -> None:
            record(addr)
            announce(addr)

        if workers == 1:
            run(config, key, host, port, relay=relay, access_log=args.access_log, on_bound=record_and_announce)
            return 0
        return serve_workers(config, key, host, port, workers, relay=relay, access_log=args.access_log,
                             on_bound=record, on_ready=announce)
    finally:
        if lock is not None:
            lock.release()


def _relay_config(args: argparse.Namespace, config: Any) -> Any:
    """``--relay``: relay for the gateways of ``--bundle`` (the notary's own address policy applies)."""
    if not args.relay:
        if args.bundle:
            raise InputError("--bundle is the bundle a relay relays for: give it with --relay")
        return None
    from client.bundle import load_bundle
    from client.cli._common import operator_keys
    from notary.relay import RelayConfig

    if not args.bundle:
        raise InputError("--relay needs --bundle FILE (the notaries it relays for)")
    bundle = load_bundle(args.bundle, operator_keys(args))
    if not bundle.notaries:
        raise InputError(f"the bundle {args.bundle} names no notary to relay for")
    # Each relay client gets a fraction of what the gateways allow this relay (notary.relay.RELAY_SHARE).
    return RelayConfig.sized_for({e.key_id: e.url for e in bundle.notaries}, config.policy,
                                 gateway_rate=config.rate_per_client, gateway_burst=config.burst_per_client,
                                 body_timeout=config.body_timeout)


def _cmd_ohttp_rotate(args: argparse.Namespace) -> int:
    from notary.ohttp_gateway import rotate_gateway_keys

    ring = rotate_gateway_keys(args.data_dir)
    print(json.dumps({"previous": ring.previous.config.key_id if ring.previous else None,
                      "current": ring.current.config.key_id, "next": ring.next.config.key_id}))
    return 0


def _cmd_notary_info(args: argparse.Namespace) -> int:
    from notary.identity_file import local_entry

    if args.url:
        scheme = args.url.partition("://")[0].lower() if "://" in args.url else ""
        if scheme not in ("http", "https"):
            raise Exit(EX_USAGE, f"parallax notary-info: {args.url!r} is not a notary URL; add http:// (a notary's own "
                                 f"listener) or https:// (a notary behind a TLS proxy), e.g. http://{args.url.partition('://')[2] or args.url}")
        entry = eventloop.run(fetch_entry(args.url, args.timeout))
    else:
        entry = local_entry(Path(args.data_dir))
    for field in ("name", "region"):
        if getattr(args, field, None):
            entry[field] = getattr(args, field)
    if args.public_url:
        entry["url"] = args.public_url
    print(json.dumps(entry, indent=2))
    return 0


async def fetch_entry(url: str, timeout: float) -> dict[str, Any]:
    """Fetch a notary's identity document and check that it is signed by the key it names."""
    import aiohttp

    from notary.core import IDENTITY_TYPE, VerifyKey, canonical_decode, verify_identity
    from notary.httputil import read_capped
    from notary.identity_file import bundle_entry

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            async with s.get(url.rstrip("/") + "/v1/notary", allow_redirects=False) as r:
                if 300 <= r.status < 400:
                    raise RemoteError(f"{url} answered a redirect (HTTP {r.status}); redirects are never followed")
                if r.status != 200:
                    raise RemoteError(f"{url} answered HTTP {r.status}")
                raw = await read_capped(r.content, 256 * 1024)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise RemoteError(f"cannot reach {url}: {exc or type(exc).__name__}") from None
    try:
        doc = canonical_decode(raw)
        # Trust on first use: the document names its own key; check it is signed by that key.
        if doc.get("payloadType") != IDENTITY_TYPE:
            raise VerificationError("not a notary identity document")
        claimed = VerifyKey.from_b64(json.loads(base64.b64decode(doc["payload"], validate=True))["public_key"])
        ident = verify_identity(doc, claimed)
    except (EncodingError, VerificationError, KeyError, TypeError, ValueError) as exc:
        raise RemoteError(f"{url} sent an invalid identity document: {exc}") from None
    return bundle_entry(ident.name, ident.url or url, ident.region, ident.key_id, ident.public_key, ident.country, ident.rir,
                        relay=ident.relay)


def add_notary_commands(sub: Any) -> None:
    """Register ``keygen``, ``serve`` and ``notary-info``."""
    p = sub.add_parser(
        "keygen", help="create a notary key, or an encrypted operator key (Ed25519, mode 0600)",
        description="Create an Ed25519 key in --data-dir (never overwriting one): DIR/notary.key, a raw seed,\n"
                    "for a notary; with --encrypt, DIR/operator.pem, a passphrase-encrypted PKCS#8 PEM, for\n"
                    "signing bundles.  Formats: docs/key-files.md.",
    )
    p.add_argument("--data-dir", required=True, metavar="DIR", help="directory for the key (created 0700 if missing)")
    p.add_argument("--encrypt", "--operator", action="store_true",
                   help="an operator key encrypted with a passphrase ($PARALLAX_KEY_PASSPHRASE or a prompt)")
    p.set_defaults(func=_cmd_keygen)

    p = sub.add_parser(
        "serve", help="run a notary (plain HTTP: put a TLS proxy in front)",
        description="Run a notary: an HTTP API that probes TLS targets on request and signs what it saw.\n"
                    "It answers from a cache for up to --ttl seconds (a client's max_age may ask for fresher).",
    )
    p.add_argument("--data-dir", required=True, metavar="DIR", help="key, identity and observation store")
    p.add_argument("--listen", type=_listen, default=("127.0.0.1", 8443), metavar="HOST:PORT",
                   help="address to listen on ([v6]:PORT for IPv6)")
    p.add_argument("--name", default="notary", help="this notary's name in its identity and bundle entry")
    p.add_argument("--region", required=True, type=_region,
                   help="region label; quorum policies count distinct regions (required: no silent default; "
                        "pass 'unknown' explicitly if it really is unknown)")
    p.add_argument("--country", help="ISO 3166 country code, for diversity rules (default: unset)")
    p.add_argument("--rir", help="Regional Internet Registry of its address space, e.g. RIPE (default: unset)")
    p.add_argument("--url", help="public URL to advertise, usually https:// at a TLS proxy (default: http://LISTEN)")
    p.add_argument("--allow-network", action="append", default=[], metavar="CIDR",
                   help="opt in to probing this private/internal network, e.g. 127.0.0.0/8 for a local test site "
                        "(repeatable; default: none)")
    p.add_argument("--allow-port", action="append", default=[], metavar="PORT",
                   help="also allow this target port besides 443; 'any' allows all (repeatable; default: 443 only)")
    p.add_argument("--trusted-proxy", action="append", default=[], metavar="CIDR",
                   help="reverse proxies whose X-Forwarded-For names the client, for rate limiting "
                        "(repeatable; default: none)")
    p.add_argument("--relay-peer", action="append", default=[], metavar="CIDR",
                   help="addresses of Oblivious HTTP relays you know (e.g. the relays of your bundle): each stands "
                        "for many clients, so it gets --relay-peer-factor times the rate and burst and no "
                        "per-client connection cap (repeatable; default: none)")
    p.add_argument("--relay-peer-factor", type=_relay_factor, default=8, metavar="N",
                   help="how many clients' allowance a --relay-peer gets (default: 8, the share a relay "
                        "gives each of its clients)")
    p.add_argument("--ttl", type=int, default=300, metavar="SECONDS",
                   help="how long an observation is answered from cache; 0 probes every time")
    p.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="connect and handshake timeout per probe")
    p.add_argument("--max-targets", type=int, default=16, metavar="N", help="targets accepted in one request")
    p.add_argument("--rate", type=float, default=20.0, help="requests per second per client (token bucket)")
    p.add_argument("--burst", type=int, default=40, help="burst size of the per-client token bucket")
    p.add_argument("--watch", action="append", default=[], metavar="HOST[:PORT]",
                   help="re-scan this target periodically to build key history (repeatable; default: none)")
    p.add_argument("--rescan-interval", type=int, default=3600, metavar="SECONDS", help="period of the --watch re-scans")
    p.add_argument("--retain-days", type=int, default=90, metavar="DAYS",
                   help="keep observations this many days")
    p.add_argument("--max-store-bytes", type=int, default=1024 ** 3, metavar="BYTES",
                   help="keep at most this many bytes of observations, oldest dropped first (1 GiB)")
    p.add_argument("--workers", type=_workers, default=None, metavar="N",
                   help="notary processes sharing the port (SO_REUSEPORT) and the store (default: the number of cores)")
    p.add_argument("--init", action="store_true", help="generate a key on first start if none exists")
    p.add_argument("--export-entry", metavar="PATH", help="also write this notary's bundle entry to PATH (default: only DIR/identity.json)")
    p.add_argument("--access-log", action="store_true",
                   help="log every request with the client's address (off by default: notaries log no client addresses)")
    p.add_argument("--relay", action="store_true",
                   help="also be an Oblivious HTTP relay for the notaries of --bundle (docs/protocol.md section 13)")
    p.add_argument("--bundle", metavar="FILE", help="with --relay: the bundle whose gateways this notary relays to")
    p.add_argument("--operator-key", action="append", metavar="KEY",
                   help="with --relay: the key that signed --bundle (repeatable)")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("ohttp-rotate", help="rotate the Oblivious HTTP gateway keys in --data-dir (next becomes current)")
    p.add_argument("--data-dir", required=True, metavar="DIR", help="the notary's data directory")
    p.set_defaults(func=_cmd_ohttp_rotate)

    p = sub.add_parser(
        "notary-info", help="print a notary's bundle entry as JSON",
        description="Print a notary's bundle entry: fetched from a running notary (its signed identity is\n"
                    "checked against the key it names), or read from a local --data-dir.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("url", nargs="?", metavar="URL",
                     help="a running notary's base URL, with http:// or https://")
    src.add_argument("--data-dir", metavar="DIR", help="read the entry of the notary whose data dir this is")
    p.add_argument("--name", help="override the name in the entry (default: the notary's)")
    p.add_argument("--region", help="override the region in the entry (default: the notary's)")
    p.add_argument("--public-url", help="override the URL in the entry (default: the notary's)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="for fetching URL")
    p.set_defaults(func=_cmd_notary_info)
