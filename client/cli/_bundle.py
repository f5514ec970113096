"""``parallax bundle merge|add|show|sign``: build and inspect notary bundles."""

from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path
from typing import Any

from client.bundle import (
    MAX_INT,
    Bundle,
    BundleEntry,
    dumps,
    load_bundle,
    merge_entries,
    parse_bundle,
    sign_bundle,
)
from client.cli._common import EX_USAGE, Exit, load_json, operator_keys, read_file, write_or_print

__all__ = ["add_bundle_commands"]


def _cmd_bundle_merge(args: argparse.Namespace) -> int:
    bundle = merge_entries(load_json(p) for p in args.entries)
    write_or_print(dumps(bundle.to_json()), args.output)
    return 0


def _cmd_bundle_add(args: argparse.Namespace) -> int:
    path = Path(args.bundle)
    bundle = load_bundle(path) if path.exists() else Bundle(())
    entry = BundleEntry.from_json(load_json(args.entry))
    bundle = bundle.add(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(bundle.to_json()))
    print(f"added {entry.name} ({entry.key_id}) to {path}")
    return 0


def _cmd_bundle_show(args: argparse.Namespace) -> int:
    """Verify and list; a signed bundle's version and expiry are shown, never enforced or recorded."""
    bundle = parse_bundle(read_file(args.file), operator_keys(args))
    if bundle.signed_by:
        expired = bundle.expires is not None and time.time() >= bundle.expires
        print(bundle.describe_signature() + (" (EXPIRED)" if expired else ""))
    for e in bundle.notaries:
        print(f"{e.name:20} {e.region:12} {e.url:32} {e.key_id}")
    return 0


def _cmd_bundle_sign(args: argparse.Namespace) -> int:
    from notary.keyfile import load_key_file

    now = int(time.time())
    expires = args.expires if args.expires is not None else now + args.valid_for * 86400
    if expires <= now:
        raise Exit(EX_USAGE, f"parallax bundle sign: --expires {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(expires))} "
                             "is not in the future")
    key = load_key_file(args.key_dir)
    bundle = parse_bundle(read_file(args.file))
    write_or_print(dumps(sign_bundle(bundle, key, version=args.bundle_version, expires=expires)), args.output)
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
    """Register ``bundle merge|add|show|sign``."""
    b = sub.add_parser("bundle", help="build and inspect notary bundles")
    bsub = b.add_subparsers(dest="bundle_command", required=True, parser_class=type(b))
    m = bsub.add_parser("merge", help="merge entries (from notary-info) into a bundle")
    m.add_argument("entries", nargs="+", metavar="ENTRY.json")
    m.add_argument("-o", "--output")
    m.set_defaults(func=_cmd_bundle_merge)
    a = bsub.add_parser("add", help="add an entry to a bundle file")
    a.add_argument("entry", metavar="ENTRY.json")
    a.add_argument("--bundle", required=True)
    a.set_defaults(func=_cmd_bundle_add)
    s = bsub.add_parser("show", help="list a bundle's notaries")
    s.add_argument("file")
    s.add_argument("--operator-key", action="append")
    s.set_defaults(func=_cmd_bundle_show)
    g = bsub.add_parser("sign", help="sign a bundle with an operator key (made with 'parallax keygen')",
                        description="Sign a plain bundle. Clients refuse a signed bundle once it expires, and one "
                                    "whose --version is lower than the highest they have accepted from this "
                                    "operator key: raise --version every time you publish.")
    g.add_argument("file")
    g.add_argument("--key-dir", required=True)
    g.add_argument("--version", dest="bundle_version", type=_positive, required=True, metavar="N",
                   help="this bundle's version: an integer higher than any you published before")
    when = g.add_mutually_exclusive_group(required=True)
    when.add_argument("--expires", type=_date, metavar="DATE",
                      help="when it stops being valid: 2027-01-31 (midnight UTC) or 2027-01-31T12:00:00Z")
    when.add_argument("--valid-for", type=_days, metavar="DAYS", help="valid for DAYS days from now")
    g.add_argument("-o", "--output")
    g.set_defaults(func=_cmd_bundle_sign)
