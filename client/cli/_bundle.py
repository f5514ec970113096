"""``parallax bundle merge|add|show|sign``: build and inspect notary bundles."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from client.bundle import Bundle, BundleEntry, dumps, load_bundle, merge_entries, parse_bundle, sign_bundle
from client.cli._common import load_json, operator_keys, read_file, write_or_print

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
    bundle = parse_bundle(read_file(args.file), operator_keys(args))
    if bundle.signed_by:
        print(f"signed by {bundle.signed_by}")
    for e in bundle.notaries:
        print(f"{e.name:20} {e.region:12} {e.url:32} {e.key_id}")
    return 0


def _cmd_bundle_sign(args: argparse.Namespace) -> int:
    from notary.keyfile import load_key_file

    key = load_key_file(args.key_dir)
    bundle = parse_bundle(read_file(args.file))
    write_or_print(dumps(sign_bundle(bundle, key)), args.output)
    return 0


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
    g = bsub.add_parser("sign", help="sign a bundle with an operator key (made with 'parallax keygen')")
    g.add_argument("file")
    g.add_argument("--key-dir", required=True)
    g.add_argument("-o", "--output")
    g.set_defaults(func=_cmd_bundle_sign)
