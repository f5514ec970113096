"""Client commands of the ``parallax`` CLI: check, bundle, cluster, demo.

Registered into :func:`notary.cli.make_parser`; exit codes are documented there
and in the README (0 consistent, 1 mitm_suspected, 2 split/insufficient/unreachable,
64+ usage and environment errors).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from notary.cli import EX_DATAERR, EX_NOINPUT, EX_USAGE, Exit, _host_port
from notary.core import VerifyKey
from notary.errors import InputError, VerificationError
from client.bundle import Bundle, BundleEntry, dumps, load_bundle, merge_entries, parse_bundle, sign_bundle
from client.policy import PRESETS, get_policy
from client.verdict import Verdict

__all__ = ["add_client_commands", "exit_code_for", "render_table"]


def exit_code_for(verdict: Verdict) -> int:
    """0 consistent (with or without outliers), 1 mitm_suspected, 2 otherwise."""
    if verdict.ok:
        return 0
    return 1 if verdict.status == "mitm_suspected" else 2


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
    lines.insert(0, f"target  {v.host}:{v.port}   you saw: {mine or v.client.status}" + (f" at {v.client.ip}" if v.client.ip else ""))
    lines.append("")
    for r in v.results:
        if r.result not in ("agrees", "disagrees"):
            lines.append(f"  {r.name}: {r.reason}")
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


def _operator_keys(args: argparse.Namespace) -> list[VerifyKey]:
    try:
        return [VerifyKey.from_b64(k) for k in (getattr(args, "operator_key", None) or [])]
    except VerificationError:
        raise InputError("--operator-key takes a base64 Ed25519 public key") from None


def _cmd_check(args: argparse.Namespace) -> int:
    from client.api import verify_with_notaries

    try:
        host, port = _host_port(args.target, 443)
    except argparse.ArgumentTypeError as exc:
        raise Exit(EX_USAGE, f"parallax check: {exc}") from None
    bundle = load_bundle(args.bundle, _operator_keys(args))
    connect_to = None
    if args.connect_to:
        h, p, addr, aport = args.connect_to
        if h not in ("", host) or p != port:
            raise Exit(64, f"parallax check: --connect-to {h}:{p} does not name the target {host}:{port}")
        connect_to = (addr, aport)
    observed: Any = None
    if args.observed:
        observed = args.observed if args.observed.startswith("sha256/") else _read(args.observed)
    policy = get_policy(args.policy)
    custom = {
        "max_age": args.max_age, "quorum_fraction": args.quorum_fraction,
        "quorum_duration": args.quorum_duration, "min_regions": args.min_regions,
    }
    if args.quorum_fraction is not None:
        custom["rule"] = "fraction"
    if any(v is not None for v in custom.values()):
        policy = policy.with_overrides(name=f"{policy.name}+custom", **custom)
    verdict = asyncio.run(verify_with_notaries(
        host, port, bundle=bundle, policy=policy, observed=observed, timeout=args.timeout,
        wait_all=args.wait_all, subset=args.subset, connect_to=connect_to, sni=args.sni,
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


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise Exit(EX_NOINPUT, f"parallax: no such file: {path}") from None


def _load_json(path: str) -> Any:
    try:
        return json.loads(_read(path))
    except ValueError as exc:
        raise Exit(EX_DATAERR, f"parallax: {path} is not JSON: {exc}") from None


def _write_or_print(text: str, out: str | None) -> None:
    if out:
        Path(out).write_text(text)
        print(out)
    else:
        sys.stdout.write(text)


def _cmd_bundle_merge(args: argparse.Namespace) -> int:
    bundle = merge_entries(_load_json(p) for p in args.entries)
    _write_or_print(dumps(bundle.to_json()), args.output)
    return 0


def _cmd_bundle_add(args: argparse.Namespace) -> int:
    path = Path(args.bundle)
    bundle = load_bundle(path) if path.exists() else Bundle(())
    entry = BundleEntry.from_json(_load_json(args.entry))
    bundle = bundle.add(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(bundle.to_json()))
    print(f"added {entry.name} ({entry.key_id}) to {path}")
    return 0


def _cmd_bundle_show(args: argparse.Namespace) -> int:
    bundle = parse_bundle(_read(args.file), _operator_keys(args))
    if bundle.signed_by:
        print(f"signed by {bundle.signed_by}")
    for e in bundle.notaries:
        print(f"{e.name:20} {e.region:12} {e.url:32} {e.key_id}")
    return 0


def _cmd_bundle_sign(args: argparse.Namespace) -> int:
    from notary.keyfile import load_key_file

    key = load_key_file(args.key_dir)
    bundle = parse_bundle(_read(args.file))
    _write_or_print(dumps(sign_bundle(bundle, key)), args.output)
    return 0


def _cmd_cluster(args: argparse.Namespace) -> int:
    from client.cluster import local_cluster

    async def run() -> None:
        async with local_cluster(args.notaries, args.data_dir, ports=list(range(args.base_port, args.base_port + args.notaries)) if args.base_port else None) as c:
            print(c.bundle_path, flush=True)
            for e in c.bundle.notaries:
                print(f"  {e.name} {e.url} {e.region} {e.key_id}", file=sys.stderr, flush=True)
            await asyncio.Event().wait()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from client.demo import run_demo

    data = args.data_dir or tempfile.mkdtemp(prefix="parallax-demo-")
    return asyncio.run(run_demo(Path(data)))


def add_client_commands(sub: Any) -> None:
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
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per notary and for your own probe")
    p.add_argument("--max-age", type=int, help="accept notary observations up to this many seconds old")
    p.add_argument("--quorum-fraction", type=float, metavar="F",
                   help="custom: this fraction of the notaries asked must agree (0 < F <= 1)")
    p.add_argument("--quorum-duration", type=int, metavar="SECONDS",
                   help="custom: count a notary only if it has seen the key for this long")
    p.add_argument("--min-regions", type=int, metavar="N", help="custom: agreeing notaries must span N regions")
    p.add_argument("--wait-all", action="store_true", help="wait for every notary (complete log)")
    p.add_argument("--subset", type=int, metavar="K", help="ask a random K notaries only")
    p.set_defaults(func=_cmd_check)

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

    c = sub.add_parser("cluster", help="run N local notaries on loopback and write their bundle")
    c.add_argument("--notaries", type=int, default=3)
    c.add_argument("--data-dir", required=True)
    c.add_argument("--base-port", type=int, default=0, help="first port (default: ephemeral)")
    c.set_defaults(func=_cmd_cluster)

    d = sub.add_parser("demo", help="local cluster + local site: a clean check and an intercepted one")
    d.add_argument("--data-dir")
    d.set_defaults(func=_cmd_demo)

    # Commands that live in their own modules register themselves here.
    from client.conformance import add_conformance_command
    from client.helper.cli import add_helper_commands

    add_conformance_command(sub)
    add_helper_commands(sub)
