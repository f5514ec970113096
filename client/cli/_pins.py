"""``parallax pins``: the memory of keys seen (trust on first use, with a second opinion).

``pins list``                 every remembered host, port and SNI: key count, first and last seen
``pins show HOST[:PORT]``     the keys remembered for a host, how each check judged them, its pins
``pins forget HOST[:PORT]``   forget a host (every port unless given): keys and pins
``pins export [-o FILE]``     everything as JSON
``pins pin HOST[:PORT] PIN``  pin a key (sha256/...): later checks must see it (else ``pin_mismatch``)

The memory lives in ``$PARALLAX_STATE_DIR`` or the user state directory
(:mod:`client.state`); ``parallax check`` consults and updates it unless ``--no-memory``.
Exit codes: 0, or 66 when ``show``/``forget`` find nothing for the host; 64+ as in
:mod:`client.cli._common`.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from typing import Any

from notary.core import Target
from notary.core.pins import spki_hex_from_pin
from client.cli._common import EX_NOINPUT, EX_USAGE, Exit, host_port, write_or_print

__all__ = ["add_pins_commands"]


def _store() -> Any:
    from client.keymemory import KeyStore

    return KeyStore()


def _when(t: int | None) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ") if t else "-"


def _target(text: str, need_port: bool = False) -> tuple[str, int | None]:
    """HOST or HOST:PORT -> (normalised host, port or None)."""
    try:
        host, port = host_port(text, 0)
        if port == 0 and text.endswith(":0"):
            raise argparse.ArgumentTypeError(f"bad port in {text!r}")
    except argparse.ArgumentTypeError as exc:
        raise Exit(EX_USAGE, f"parallax pins: {exc}") from None
    return Target.parse(host, port or 443).host, port or None


def _cmd_list(args: argparse.Namespace) -> int:
    rows = _store().targets()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no keys remembered yet")
    for r in rows:
        sni = f" sni={r['sni']}" if r["sni"] and r["sni"] != r["host"] else ""
        print(f"{r['host']}:{r['port']}{sni}  keys={r['keys']}  pinned={r['pinned']}  "
              f"first={_when(r['first_seen'])}  last={_when(r['last_seen'])}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    host, port = _target(args.target)
    found = _store().show(host, port)
    if not found:
        raise Exit(EX_NOINPUT, f"parallax pins: nothing remembered for {args.target}")
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    for t in found:
        print(f"{t['host']}:{t['port']} (sni {t['sni'] or '-'})")
        for k in t["keys"]:
            judged = ", ".join(f"{s} x{n}" for s, n in sorted(k["statuses"].items()))
            print(f"  {k['pin']}  first {_when(k['first_seen'])}  last {_when(k['last_seen'])}  {judged}")
        for p in t["pinned"]:
            print(f"  pinned: {p}")
    return 0


def _cmd_forget(args: argparse.Namespace) -> int:
    host, port = _target(args.target)
    n = _store().forget(host, port)
    if not n:
        raise Exit(EX_NOINPUT, f"parallax pins: nothing remembered for {args.target}")
    print(f"forgot {n} key(s) and pin(s) of {args.target}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    write_or_print(json.dumps(_store().export(), indent=2) + "\n", args.output)
    return 0


def _cmd_pin(args: argparse.Namespace) -> int:
    host, port = _target(args.target, need_port=True)
    spki = spki_hex_from_pin(args.pin)
    target = Target.parse(host, port or 443, args.sni)
    _store().pin(target, spki, int(time.time()))
    print(f"pinned {args.pin} for {target}" + (f" (sni {target.sni})" if target.sni and target.sni != target.host else ""))
    return 0


def add_pins_commands(sub: Any) -> None:
    """Register ``pins`` and its subcommands."""
    g = sub.add_parser("pins", help="the memory of keys seen: list, show, forget, export, pin")
    gsub = g.add_subparsers(dest="pins_command", required=True, parser_class=type(g))
    p = gsub.add_parser("list", help="every remembered host")
    p.add_argument("--json", action="store_true", help="print JSON instead of one line per host")
    p.set_defaults(func=_cmd_list)
    p = gsub.add_parser("show", help="the keys remembered for a host")
    p.add_argument("target", metavar="HOST[:PORT]", help="the host (port 443 when none is given)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a listing")
    p.set_defaults(func=_cmd_show)
    p = gsub.add_parser("forget", help="forget a host (every port unless given)")
    p.add_argument("target", metavar="HOST[:PORT]", help="the host, and optionally the one port to forget")
    p.set_defaults(func=_cmd_forget)
    p = gsub.add_parser("export", help="everything as JSON")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE (default: stdout)")
    p.set_defaults(func=_cmd_export)
    p = gsub.add_parser("pin", help="pin a key for a host: later checks must see it")
    p.add_argument("target", metavar="HOST[:PORT]", help="the host (port 443 when none is given)")
    p.add_argument("pin", metavar="sha256/...", help="the key's pin, as 'parallax check --pin' prints it")
    p.add_argument("--sni", help="server name the key is pinned for (default: the host name)")
    p.set_defaults(func=_cmd_pin)
