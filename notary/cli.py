"""The ``parallax`` command line.

Notary commands live here (``keygen``, ``serve``, ``notary-info``); client
commands (``check``, ``bundle``, ``cluster``, ``demo``, ``conformance``,
``helper``) are registered by :mod:`client.cli`.

Exit codes (documented in the README):

====  ==========================================================
0     success; for ``check``: consistent (with or without outliers)
1     ``check``: mitm_suspected
2     ``check``: split_view, insufficient or unreachable
64    usage error (bad flag, bad host or port)
65    bad data (malformed bundle, certificate, JSON)
66    an input file does not exist
69    a remote service is unavailable or answered badly
73    cannot create (a key already exists)
74    I/O error
78    configuration error (key file permissions, data dir)
70    internal error (a bug; reported in one line)
====  ==========================================================
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

from notary.errors import (
    ConfigError,
    EncodingError,
    InputError,
    KeyFileError,
    ParallaxError,
    RemoteError,
    StoreError,
    VerificationError,
)

__all__ = ["main", "Exit", "EX_USAGE", "EX_DATAERR", "EX_NOINPUT", "EX_UNAVAILABLE", "EX_CANTCREAT", "EX_IOERR", "EX_CONFIG", "EX_SOFTWARE"]

EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_CANTCREAT = 73
EX_IOERR = 74
EX_CONFIG = 78

IDENTITY_FILE = "identity.json"


class Exit(Exception):
    """Leave with a one-line message and an exit code."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise Exit(EX_USAGE, f"{self.prog}: {message} (see --help)")


def _host_port(text: str, default_port: int | None = None) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or (host.count(":") and not host.endswith("]")):
        if default_port is None:
            raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
        host, port = text, str(default_port)
    host = host.strip("[]")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"bad port in {text!r}")
    return host, int(port)


def _listen(text: str) -> tuple[str, int]:
    return _host_port(text)


# -- keygen ---------------------------------------------------------------------

def _cmd_keygen(args: argparse.Namespace) -> int:
    from notary.keyfile import generate_key_file

    key = generate_key_file(args.data_dir)
    print(json.dumps({"key_id": key.key_id, "public_key": key.verify_key.b64}))
    return 0


# -- serve ----------------------------------------------------------------------

def build_config(args: argparse.Namespace, *, url: str | None) -> Any:
    from notary.config import NotaryConfig
    from notary.core import AddressPolicy, Target, parse_networks
    from notary.prober import ProbeLimits
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
        watch = tuple(Target.parse(*_host_port(w, 443)) for w in args.watch)
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
    )


def _cmd_serve(args: argparse.Namespace) -> int:
    from notary.keyfile import generate_key_file, key_path, load_key_file
    from notary.server import run

    host, port = args.listen
    if args.init and not key_path(args.data_dir).exists():
        generate_key_file(args.data_dir)
        logging.getLogger("parallax.notary").info("generated a new notary key in %s", args.data_dir)
    key = load_key_file(args.data_dir)
    url = args.url or f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    if not args.url and host in ("0.0.0.0", "::", ""):
        print(f"parallax serve: warning: advertising {url}, which clients cannot reach; pass --url", file=sys.stderr)
    config = build_config(args, url=url)
    entry = bundle_entry(config.name, url, config.region, key.key_id, key.verify_key.b64, config.country, config.rir)
    _write_identity(Path(args.data_dir), entry)
    if args.export_entry:
        Path(args.export_entry).parent.mkdir(parents=True, exist_ok=True)
        Path(args.export_entry).write_text(json.dumps(entry, indent=2) + "\n")
    print(json.dumps({"serving": url, "key_id": key.key_id, "region": config.region}), flush=True)
    run(config, key, host, port)
    return 0


def bundle_entry(name: str, url: str | None, region: str, key_id: str, public_key: str,
                 country: str | None = None, rir: str | None = None) -> dict[str, Any]:
    """A bundle entry: what ``parallax notary-info`` prints and ``parallax bundle`` merges."""
    entry: dict[str, Any] = {"name": name, "url": url, "region": region, "key_id": key_id, "public_key": public_key}
    if country:
        entry["country"] = country
    if rir:
        entry["rir"] = rir
    return entry


def _write_identity(data_dir: Path, entry: dict[str, Any]) -> None:
    path = data_dir / IDENTITY_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entry, indent=2) + "\n")
    os.replace(tmp, path)


# -- notary-info ----------------------------------------------------------------

def _cmd_notary_info(args: argparse.Namespace) -> int:
    if args.url:
        entry = asyncio.run(_fetch_entry(args.url, args.timeout))
    else:
        entry = _local_entry(Path(args.data_dir))
    for field in ("name", "region", "url"):
        if getattr(args, field, None) and field != "url":
            entry[field] = getattr(args, field)
    if args.public_url:
        entry["url"] = args.public_url
    print(json.dumps(entry, indent=2))
    return 0


def _local_entry(data_dir: Path) -> dict[str, Any]:
    from notary.core import VerifyKey
    from notary.keyfile import PUB_FILE

    try:
        pub = (data_dir / PUB_FILE).read_text().strip()
    except FileNotFoundError:
        raise Exit(EX_NOINPUT, f"no public key at {data_dir / PUB_FILE}; run 'parallax keygen' first") from None
    key = VerifyKey.from_b64(pub)
    try:
        saved = json.loads((data_dir / IDENTITY_FILE).read_text())
    except FileNotFoundError:
        saved = {}
    except ValueError:
        raise Exit(EX_DATAERR, f"parallax: {data_dir / IDENTITY_FILE} is not JSON") from None
    if not isinstance(saved, dict):
        raise Exit(EX_DATAERR, f"parallax: {data_dir / IDENTITY_FILE} is not a JSON object")
    return bundle_entry(saved.get("name", "notary"), saved.get("url"), saved.get("region", "unknown"),
                        key.key_id, key.b64, saved.get("country"), saved.get("rir"))


async def _fetch_entry(url: str, timeout: float) -> dict[str, Any]:
    """Fetch a notary's identity document and check that it is signed by the key it names."""
    import aiohttp

    from notary.core import IDENTITY_TYPE, VerifyKey, canonical_decode, verify_identity
    from notary.httputil import read_capped

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            async with s.get(url.rstrip("/") + "/v1/notary") as r:
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
    return bundle_entry(ident.name, ident.url or url, ident.region, ident.key_id, ident.public_key, ident.country, ident.rir)


# -- main -----------------------------------------------------------------------

def _add_notary_commands(sub: Any) -> None:
    p = sub.add_parser("keygen", help="create a notary key (Ed25519, mode 0600) in --data-dir")
    p.add_argument("--data-dir", required=True)
    p.set_defaults(func=_cmd_keygen)

    p = sub.add_parser("serve", help="run a notary")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--listen", type=_listen, default=("127.0.0.1", 8443), help="HOST:PORT (default 127.0.0.1:8443)")
    p.add_argument("--name", default="notary")
    p.add_argument("--region", default="unknown")
    p.add_argument("--country")
    p.add_argument("--rir")
    p.add_argument("--url", help="public URL to advertise (default http://LISTEN)")
    p.add_argument("--allow-network", action="append", default=[], metavar="CIDR",
                   help="opt in to probing this internal network (repeatable)")
    p.add_argument("--allow-port", action="append", default=[], metavar="PORT",
                   help="also allow this target port besides 443; 'any' allows all (repeatable)")
    p.add_argument("--trusted-proxy", action="append", default=[], metavar="CIDR",
                   help="reverse proxies whose X-Forwarded-For names the client, for rate limiting (repeatable)")
    p.add_argument("--ttl", type=int, default=300, help="cache lifetime of an observation, seconds")
    p.add_argument("--timeout", type=float, default=5.0, help="connect and handshake timeout, seconds")
    p.add_argument("--max-targets", type=int, default=16)
    p.add_argument("--rate", type=float, default=20.0, help="requests per second per client")
    p.add_argument("--burst", type=int, default=40)
    p.add_argument("--watch", action="append", default=[], metavar="HOST[:PORT]", help="re-scan periodically")
    p.add_argument("--rescan-interval", type=int, default=3600)
    p.add_argument("--init", action="store_true", help="generate a key on first start if none exists")
    p.add_argument("--export-entry", metavar="PATH", help="write this notary's bundle entry to PATH")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("notary-info", help="print a notary's bundle entry as JSON")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("url", nargs="?", help="a running notary's base URL")
    src.add_argument("--data-dir")
    p.add_argument("--name")
    p.add_argument("--region")
    p.add_argument("--public-url", help="override the URL in the entry")
    p.add_argument("--timeout", type=float, default=10.0)
    p.set_defaults(func=_cmd_notary_info)


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="parallax", description="Parallax: multi-vantage TLS notary network")
    parser.add_argument("--log-level", default=os.environ.get("PARALLAX_LOG", "WARNING"))
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_notary_commands(sub)
    try:
        from client.cli import add_client_commands
    except ImportError:  # pragma: no cover - the client ships in the same distribution
        pass
    else:
        add_client_commands(sub)
    return parser


def _exit_code(exc: BaseException) -> int:
    if isinstance(exc, KeyFileError) and "already exists" in str(exc):
        return EX_CANTCREAT
    if isinstance(exc, ConfigError):
        return EX_CONFIG
    if isinstance(exc, InputError):
        if exc.code == "no_bundle":
            return EX_NOINPUT
        if exc.code == "io_error":
            return EX_IOERR
        if exc.code in ("bad_bundle", "bad_certificate", "bad_pin"):
            return EX_DATAERR
        return EX_USAGE
    if isinstance(exc, (EncodingError, VerificationError)):
        return EX_DATAERR
    if isinstance(exc, RemoteError):
        return EX_UNAVAILABLE
    if isinstance(exc, StoreError):  # an unreadable or corrupt observation store is not a bug
        return EX_IOERR
    return EX_SOFTWARE


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point.  Returns (and, as a script, exits with) the exit code."""
    try:
        args = make_parser().parse_args(argv)
        logging.basicConfig(
            level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr,
        )
        func: Callable[[argparse.Namespace], int] = args.func
        return func(args)
    except Exit as e:
        if e.message:
            print(e.message, file=sys.stderr)
        return e.code
    except ParallaxError as exc:
        print(f"parallax: {exc}", file=sys.stderr)
        return _exit_code(exc)
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"parallax: {exc.strerror or exc}: {getattr(exc, 'filename', '') or ''}".rstrip(": "), file=sys.stderr)
        return EX_IOERR
    except Exception as exc:  # a bug: still one line
        print(f"parallax: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EX_SOFTWARE


if __name__ == "__main__":
    sys.exit(main())


def run_main() -> NoReturn:
    """Console-script entry: exit with :func:`main`'s code."""
    sys.exit(main())
