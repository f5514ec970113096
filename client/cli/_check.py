"""``parallax check``: ask the notaries (and any ``--via`` proxies) whether they see the key you see.

Exit codes: 0 consistent (with or without outliers), 1 mitm_suspected,
key_changed or pin_mismatch, 2 split_view, insufficient or unreachable,
3 intercepted_as_expected; 64+ as in :mod:`client.cli._common`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from client.bundle import Bundle, find_bundle_path, load_bundle
from client.cli._common import EX_EXPECTED_INTERCEPTION, EX_USAGE, Exit, host_port, operator_keys, read_file
from client.policy import PRESETS, get_policy
from client.verdict import Verdict

__all__ = ["add_check_command", "exit_code_for", "render_table"]


_ALARMS = frozenset({"mitm_suspected", "key_changed", "pin_mismatch"})


def exit_code_for(verdict: Verdict) -> int:
    """0 consistent (with or without outliers); 1 an alarm (mitm_suspected, key_changed, pin_mismatch);
    3 intercepted_as_expected (never 0: the key is not the one others see); 2 otherwise."""
    if verdict.ok:
        return 0
    if verdict.status == "intercepted_as_expected":
        return EX_EXPECTED_INTERCEPTION
    return 1 if verdict.status in _ALARMS else 2


def _short(pin: str) -> str:
    return pin[:7] + pin[7:19] + "…" if len(pin) > 20 else pin


def render_table(v: Verdict) -> str:
    """A table a person can read: notary, region, what it saw, agrees?, age; then the verdict."""
    rows = [("NOTARY", "REGION", "SAW", "RESULT", "AGE")]
    for r in v.results:
        saw = ", ".join(_short(p) for p in r.pins) or "-"
        age = f"{r.age}s" if r.age is not None else "-"
        rows.append((r.name, r.region or "-", saw, r.result if r.counted or r.result != "agrees" else "agrees (not counted)", age))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    mine = v.client.to_json()["pin"]
    if not v.results:
        lines = ["(no notaries asked)"]
    lines.insert(0, f"target  {v.host}:{v.port}   you saw: {mine or v.client.status}" + (f" at {v.client.ip}" if v.client.ip else ""))
    lines.append("")
    for r in v.results:
        if r.result not in ("agrees", "disagrees"):
            lines.append(f"  {r.name}: {r.reason}")
    if v.relays:
        lines.append(f"relay: {', '.join(v.relays)} (Oblivious HTTP: the notaries did not see your address)")
    if v.vantages:
        lines.append("proxy vantages (UNSIGNED: trusted only as far as you trust each proxy and the path to it; "
                     + ("counted" if any(x.counted for x in v.vantages) else "advisory, not counted") + "):")
        for x in v.vantages:
            saw = ", ".join(_short(p) for p in x.pins) or "-"
            dns = "dns at proxy" if x.remote_dns else "local dns"
            lines.append(f"  {x.name}  ({dns})  saw {saw}  " + (x.result if x.result in ("agrees", "disagrees") else x.reason))
    if v.interception is not None:
        i = v.interception
        lines.append(f"expected interceptor declared: {', '.join(i.expected)}; "
                     + (f"your key matches {i.matched}" if i.matched else "your key does not match it"))
    if v.memory is not None:
        lines.append(f"memory: {v.memory.change}: {v.memory.detail}"
                     + (f"; pinned key: {v.memory.pinned}" if v.memory.pinned else ""))
    lines.append(f"verdict: {v.status} ({v.count}, policy {v.policy}, {v.required} needed)")
    lines.append(v.summary)
    return "\n".join(lines)


def _parse_connect_to(text: str) -> tuple[str, int, str, int]:
    parts = text.rsplit(":", 3)
    if len(parts) != 4 or not parts[1].isdigit() or not parts[3].isdigit():
        raise argparse.ArgumentTypeError("expected HOST:PORT:ADDR:PORT")
    if not all(1 <= int(p) <= 65535 for p in (parts[1], parts[3])):
        raise argparse.ArgumentTypeError("ports must be 1-65535")
    return parts[0].strip("[]"), int(parts[1]), parts[2].strip("[]"), int(parts[3])


def _via(text: str) -> Any:
    from client.socks import parse_via
    from notary.errors import InputError

    try:
        return parse_via(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cmd_check(args: argparse.Namespace) -> int:
    from client.api import verify_with_notaries

    try:
        host, port = host_port(args.target, 443)
    except argparse.ArgumentTypeError as exc:
        raise Exit(EX_USAGE, f"parallax check: {exc}") from None
    if args.via and not args.bundle and not find_bundle_path(None).exists():
        bundle = Bundle(())  # proxies only: no notary network needed (the policy decides what they can conclude)
    else:
        bundle = load_bundle(args.bundle, operator_keys(args))
    connect_to = None
    if args.connect_to:
        h, p, addr, aport = args.connect_to
        if h not in ("", host) or p != port:
            raise Exit(EX_USAGE, f"parallax check: --connect-to {h}:{p} does not name the target {host}:{port}")
        connect_to = (addr, aport)
    observed: Any = None
    if args.observed:
        observed = args.observed if args.observed.startswith("sha256/") else read_file(args.observed)
    policy = get_policy(args.policy)
    custom = {
        "max_age": args.max_age, "quorum_fraction": args.quorum_fraction,
        "quorum_duration": args.quorum_duration, "min_regions": args.min_regions,
    }
    if args.quorum_fraction is not None:
        custom["rule"] = "fraction"
    if args.proxies is not None:
        custom["proxies"] = args.proxies
    if any(v is not None for v in custom.values()):
        policy = policy.with_overrides(name=f"{policy.name}+custom", **custom)
    expect: list[str | bytes] = [e if e.startswith("sha256/") else read_file(e) for e in args.expect_interceptor or ()]
    memory = None
    if not args.no_memory:
        from client.keymemory import KeyStore

        memory = KeyStore()
    verdict = asyncio.run(verify_with_notaries(
        host, port, bundle=bundle, policy=policy, observed=observed, timeout=args.timeout,
        wait_all=args.wait_all, subset=args.subset, connect_to=connect_to, sni=args.sni, relay=args.relay,
        via=args.via or (), isolate=not args.no_isolate, expect_interceptor=expect, memory=memory,
    ))
    if args.json:
        print(json.dumps(verdict.to_json(), indent=2))
    elif args.pin:
        if verdict.pin:
            print(verdict.pin)
        else:
            print(f"parallax check: no pin: {verdict.summary}", file=sys.stderr)
    else:
        print(render_table(verdict))
    return exit_code_for(verdict)



def add_check_command(sub: Any) -> None:
    """Register ``check``."""
    p = sub.add_parser("check", help="ask the notaries whether they see the key you see")
    p.add_argument("target", metavar="HOST[:PORT]")
    p.add_argument("--bundle", help="bundle file (default: $PARALLAX_BUNDLE or the user config dir)")
    p.add_argument("--operator-key", action="append", help="trust bundles signed by this base64 key (repeatable)")
    p.add_argument("--policy", default="mpic", choices=sorted(PRESETS))
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")
    p.add_argument("--pin", action="store_true", help="print the agreed sha256/ pin (only when consistent)")
    p.add_argument("--connect-to", type=_parse_connect_to, metavar="HOST:PORT:ADDR:PORT",
                   help="point only this client's own probe at ADDR:PORT (like curl)")
    p.add_argument("--observed", metavar="PIN|CERTFILE", help="what you already saw: a sha256/ pin or a PEM/DER file")
    p.add_argument("--sni")
    p.add_argument("--relay", default="none", metavar="auto|URL|none",
                   help="ask through an Oblivious HTTP relay: auto picks a relay notary of the bundle (default none)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per notary and for your own probe")
    p.add_argument("--max-age", type=int, help="accept notary observations up to this many seconds old")
    p.add_argument("--quorum-fraction", type=float, metavar="F",
                   help="custom: this fraction of the notaries asked must agree (0 < F <= 1)")
    p.add_argument("--quorum-duration", type=int, metavar="SECONDS",
                   help="custom: count a notary only if it has seen the key for this long")
    p.add_argument("--min-regions", type=int, metavar="N", help="custom: agreeing notaries must span N regions")
    p.add_argument("--wait-all", action="store_true", help="wait for every notary (complete log)")
    p.add_argument("--subset", type=int, metavar="K", help="ask a random K notaries only")
    p.add_argument("--via", action="append", type=_via, metavar="socks5[h]://HOST:PORT",
                   help="also probe through this SOCKS5 proxy (repeatable; socks5h: the proxy resolves the name); "
                        "an unsigned vantage, see --proxies")
    p.add_argument("--proxies", choices=("advisory", "count"),
                   help="how --via proxies weigh: advisory (shown, not counted; the default of notary policies) "
                        "or count (each is one more vantage in the quorum; the 'proxies' policy)")
    p.add_argument("--no-isolate", action="store_true",
                   help="do not send fresh SOCKS credentials per proxy (Tor stream isolation is on by default)")
    p.add_argument("--expect-interceptor", action="append", metavar="PIN|CAFILE",
                   help="a declared interceptor: its key (sha256/...) or issuing CA certificate (PEM/DER file); "
                        "a match reads intercepted_as_expected (exit 3), not mitm_suspected")
    p.add_argument("--no-memory", action="store_true",
                   help="neither consult nor update the memory of keys seen ($PARALLAX_STATE_DIR or the user state dir)")
    p.set_defaults(func=_cmd_check)
