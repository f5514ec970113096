"""``parallax bundle merge|add|show|sign|fetch``: build, inspect, sign and install notary bundles.

Without ``--bundle``, ``add``, ``show`` and ``fetch`` use the default bundle
location (``$PARALLAX_BUNDLE``, else ``bundle.json`` in the user config dir),
the one ``check`` reads.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path
from typing import Any

from client.bundle import (
    MAX_BUNDLE_BYTES,
    MAX_INT,
    Bundle,
    BundleEntry,
    check_signed_bundle,
    dumps,
    find_bundle_path,
    load_bundle,
    merge_entries,
    parse_bundle,
    sign_bundle,
)
from client.cli._common import EX_USAGE, Exit, load_json, operator_keys, passphrase, read_file, write_or_print
from notary import eventloop
from notary.core import SigningKey
from notary.errors import InputError, RemoteError

__all__ = ["add_bundle_commands", "fetch_bundle_bytes"]

_DEFAULT_WHERE = "$PARALLAX_BUNDLE, else bundle.json in the user config dir"


def _cmd_bundle_merge(args: argparse.Namespace) -> int:
    bundle = merge_entries(load_json(p) for p in args.entries)
    write_or_print(dumps(bundle.to_json()), args.output)
    return 0


def _cmd_bundle_add(args: argparse.Namespace) -> int:
    path = find_bundle_path(args.bundle)
    bundle = load_bundle(path) if path.exists() else Bundle(())
    entry = BundleEntry.from_json(load_json(args.entry))
    bundle = bundle.add(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(bundle.to_json()))
    print(f"added {entry.name} ({entry.key_id}) to {path}")
    return 0


def _cmd_bundle_show(args: argparse.Namespace) -> int:
    """Verify and list; a signed bundle's version and expiry are shown, never enforced or recorded."""
    path = find_bundle_path(args.file)
    bundle = parse_bundle(read_file(str(path)), operator_keys(args))
    if not args.file:  # say which file the default location resolved to (stderr: stdout stays the listing)
        print(f"bundle {path}: {len(bundle.notaries)} notaries", file=sys.stderr)
    if bundle.signed_by:
        expired = bundle.expires is not None and time.time() >= bundle.expires
        print(bundle.describe_signature() + (" (EXPIRED)" if expired else ""))
    for e in bundle.notaries:
        print(f"{e.name:20} {e.region:12} {e.url:32} {e.key_id}")
    return 0


def _signing_key(args: argparse.Namespace) -> SigningKey:
    from notary.keyfile import OPERATOR_KEY_FILE, load_encrypted_key_file, load_key_file

    if args.key:
        return load_encrypted_key_file(args.key, passphrase(confirm=False))
    pem = Path(args.key_dir) / OPERATOR_KEY_FILE
    if pem.exists():
        return load_encrypted_key_file(pem, passphrase(confirm=False))
    return load_key_file(args.key_dir)


def _cmd_bundle_sign(args: argparse.Namespace) -> int:
    now = int(time.time())
    expires = args.expires if args.expires is not None else now + args.valid_for * 86400
    if expires <= now:
        raise Exit(EX_USAGE, f"parallax bundle sign: --expires {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(expires))} "
                             "is not in the future")
    bundle = parse_bundle(read_file(args.file))
    key = _signing_key(args)
    write_or_print(dumps(sign_bundle(bundle, key, version=args.bundle_version, expires=expires)), args.output)
    return 0


async def fetch_bundle_bytes(url: str, *, timeout: float, limit: int = MAX_BUNDLE_BYTES) -> bytes:
    """GET ``url``: no redirects followed, at most ``limit`` bytes, ``timeout`` seconds in all.

    Raises :class:`RemoteError` for anything but a complete 200 answer.
    """
    import aiohttp

    from notary.httputil import read_capped

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
            async with s.get(url, allow_redirects=False) as r:
                if 300 <= r.status < 400:
                    where = r.headers.get("Location", "?")
                    raise RemoteError(f"{url} redirects to {where}; redirects are not followed: fetch that URL if you trust it")
                if r.status != 200:
                    raise RemoteError(f"{url} answered HTTP {r.status}")
                return await read_capped(r.content, limit)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise RemoteError(f"cannot fetch {url}: {exc or type(exc).__name__}") from None


def _cmd_bundle_fetch(args: argparse.Namespace) -> int:
    from client.bundle_state import BundleState

    if not args.url.lower().startswith(("https://", "http://")):
        raise Exit(EX_USAGE, f"parallax bundle fetch: {args.url!r} is not an http:// or https:// URL")
    keys = operator_keys(args)
    if not keys:
        raise Exit(EX_USAGE, "parallax bundle fetch: --operator-key is required (a fetched bundle must be signed)")
    raw = eventloop.run(fetch_bundle_bytes(args.url, timeout=args.timeout))
    bundle = parse_bundle(raw, keys)  # verifies the operator signature before anything is used
    assert bundle.signed_by is not None
    # Refuse an expired or rolled-back bundle now rather than at the next check (nothing recorded here).
    check_signed_bundle(bundle, now=int(time.time()), highest=BundleState(None).highest(bundle.signed_by))
    path = find_bundle_path(args.output)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(raw)
        os.replace(tmp, path)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror}", "io_error") from None
    print(f"installed {len(bundle.notaries)} notaries ({bundle.describe_signature()}) at {path}")
    return 0


def _positive(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_INT:
        raise argparse.ArgumentTypeError(f"expected an integer from 1 to {MAX_INT}, got {text!r}")
    return int(text)


def _days(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 36600:
        raise argparse.ArgumentTypeError(f"expected a number of days from 1 to 36600, got {text!r}")
    return int(text)


def _date(text: str) -> int:
    """YYYY-MM-DD (midnight UTC) or YYYY-MM-DDTHH:MM[:SS][Z|+HH:MM] (UTC without an offset) -> unix seconds."""
    try:
        d = dt.datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date like 2027-01-31 or 2027-01-31T12:00:00Z, got {text!r}") from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.timezone.utc)
    return int(d.timestamp())


def add_bundle_commands(sub: Any) -> None:
    """Register ``bundle merge|add|show|sign|fetch``."""
    b = sub.add_parser("bundle", help="build, inspect, sign and fetch notary bundles",
                       description="A bundle lists the notaries a client asks (name, URL, region, key).")
    bsub = b.add_subparsers(dest="bundle_command", required=True, parser_class=type(b), metavar="COMMAND",
                            title="commands")
    m = bsub.add_parser("merge", help="merge entries (from notary-info) into a bundle")
    m.add_argument("entries", nargs="+", metavar="ENTRY.json", help="entries or bundles to merge")
    m.add_argument("-o", "--output", metavar="FILE", help="write the bundle to FILE (default: stdout)")
    m.set_defaults(func=_cmd_bundle_merge)

    a = bsub.add_parser("add", help="add an entry to a bundle file (created if missing)")
    a.add_argument("entry", metavar="ENTRY.json", help="an entry as printed by 'parallax notary-info'")
    a.add_argument("--bundle", metavar="FILE", help=f"the bundle to change (default: {_DEFAULT_WHERE})")
    a.set_defaults(func=_cmd_bundle_add)

    s = bsub.add_parser("show", help="list a bundle's notaries (and a signed bundle's version and expiry)")
    s.add_argument("file", nargs="?", metavar="FILE", help=f"the bundle (default: {_DEFAULT_WHERE})")
    s.add_argument("--operator-key", action="append", metavar="KEY",
                   help="require a signature by this base64 Ed25519 key (repeatable; default: none)")
    s.set_defaults(func=_cmd_bundle_show)

    g = bsub.add_parser("sign", help="sign a bundle with an operator key (made with 'parallax keygen --encrypt')",
                        description="Sign a plain bundle. Clients refuse a signed bundle once it expires, and one\n"
                                    "whose --version is lower than the highest they have accepted from this\n"
                                    "operator key: raise --version every time you publish.")
    g.add_argument("file", metavar="FILE", help="the unsigned bundle")
    k = g.add_mutually_exclusive_group(required=True)
    k.add_argument("--key-dir", metavar="DIR",
                   help="DIR/operator.pem (encrypted; passphrase from $PARALLAX_KEY_PASSPHRASE or a prompt), "
                        "else DIR/notary.key")
    k.add_argument("--key", metavar="PEM", help="an encrypted PKCS#8 PEM Ed25519 key (e.g. made by openssl genpkey)")
    g.add_argument("--version", dest="bundle_version", type=_positive, required=True, metavar="N",
                   help="this bundle's version: an integer higher than any you published before")
    when = g.add_mutually_exclusive_group(required=True)
    when.add_argument("--expires", type=_date, metavar="DATE",
                      help="when it stops being valid: 2027-01-31 (midnight UTC) or 2027-01-31T12:00:00Z")
    when.add_argument("--valid-for", type=_days, metavar="DAYS", help="valid for DAYS days from now")
    g.add_argument("-o", "--output", metavar="FILE", help="write the signed bundle to FILE (default: stdout)")
    g.set_defaults(func=_cmd_bundle_sign)

    f = bsub.add_parser(
        "fetch", help="download a signed bundle, verify it, and install it as the default bundle",
        description="Download a signed bundle (no redirects followed, at most 1 MiB), verify its operator\n"
                    "signature, expiry and version, and install it where 'parallax check' looks for it.",
    )
    f.add_argument("url", metavar="URL", help="where the operator publishes the signed bundle (https://...)")
    f.add_argument("--operator-key", action="append", metavar="KEY",
                   help="the operator's base64 Ed25519 public key, from a trusted channel (required; repeatable)")
    f.add_argument("-o", "--output", metavar="FILE", help=f"install here instead (default: {_DEFAULT_WHERE})")
    f.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS", help="for the whole download")
    f.set_defaults(func=_cmd_bundle_fetch)
