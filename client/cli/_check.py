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
from pathlib import Path
from typing import Any, TextIO

from client.bundle import Bundle, find_bundle_path, load_bundle
from client.cli._common import EX_EXPECTED_INTERCEPTION, EX_NOINPUT, EX_USAGE, Exit, operator_keys, read_file
from client.cli._help import POLICY_HELP
from client.policy import PRESETS, Policy, get_policy
from client.verdict import Verdict
from notary import eventloop
from notary.core import TARGET_FORMS, split_target
from notary.errors import InputError

__all__ = ["add_check_command", "exit_code_for", "relay_line", "render_table", "render_summary", "policy_line",
           "worst_exit_code"]


_ALARMS = frozenset({"mitm_suspected", "key_changed", "pin_mismatch"})


def exit_code_for(verdict: Verdict) -> int:
    """0 consistent (with or without outliers); 1 an alarm (mitm_suspected, key_changed, pin_mismatch);
    3 intercepted_as_expected (never 0: the key is not the one others see); 2 otherwise."""
    if verdict.ok:
        return 0
    if verdict.status == "intercepted_as_expected":
        return EX_EXPECTED_INTERCEPTION
    return 1 if verdict.status in _ALARMS else 2


def worst_exit_code(codes: list[int]) -> int:
    """The exit code for many verdicts: an alarm (1) first, then not consistent (2), then an
    expected interception (3), else 0."""
    for code in (1, 2, EX_EXPECTED_INTERCEPTION):
        if code in codes:
            return code
    return max(codes, default=0)


#: One line per preset: what "N needed" means under it.
_POLICY_LINES = {
    "mpic": "n-1 of n notaries must agree (n<=5; n-2 for n>=6), from at least 2 regions",
    "consensus": "every notary asked must agree",
    "majority": "more than half of the notaries asked must agree",
    "minority": "one agreeing notary is enough",
    "perspectives": "75% of the notaries asked must agree",
    "proxies": "every vantage asked (notaries and counted --via proxies) must agree",
}


def policy_line(v: Verdict) -> str:
    """One line: the policy the check used, and what "N needed" means."""
    base, _, custom = v.policy.partition("+")
    rule = _POLICY_LINES.get(base, "its own rule")
    return (f"policy {v.policy}: {rule}{' (with custom values)' if custom else ''}; "
            f"\"{v.required} needed\": of the {v.asked} notaries asked, this many must see your key (consistent) "
            f"or a different one (mitm_suspected)")


def _short(pin: str) -> str:
    return pin[:7] + pin[7:19] + "…" if len(pin) > 20 else pin


def relay_line(v: Verdict) -> str:
    """What the relays hid, exactly: which notaries saw the client's address, if any."""
    line = f"relay: {', '.join(v.relays)} (Oblivious HTTP: "
    if not v.address_seen_by:
        return line + "the notaries asked saw the site but not your address; the relay saw your address, not the site)"
    seen = (f"your address was seen by {', '.join(v.address_seen_by)} (identity fetched directly, or relaying "
            "for the others), so they can link it to the site by timing")
    if {r.name for r in v.results} <= set(v.address_seen_by):
        return line + seen + ")"
    return line + seen + "; the others saw the site, not your address)"


def render_table(v: Verdict) -> str:
    """A table a person can read: notary, region, what it saw, agrees?, age; then the verdict."""
    rows = [("NOTARY", "REGION", "SAW", "RESULT", "AGE")]
    for r in v.results:
        saw = ", ".join(_short(p) for p in r.pins) or "-"
        age = f"{r.age}s" if r.age is not None else "-"
        result = r.result if r.counted or r.result != "agrees" else "agrees (not counted)"
        rows.append((r.name, r.region or "-", saw, result, age))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    mine = v.client.to_json()["pin"]
    if not v.results:
        lines = ["(no notaries asked)"]
    lines.insert(0, f"target  {v.host}:{v.port}   you saw: {mine or v.client.status}" + (f" at {v.client.ip}" if v.client.ip else ""))
    lines.append("")
    for r in v.results:
        if r.result not in ("agrees", "disagrees") or not r.counted:
            lines.append(f"  {r.name}: {r.reason}")
    if v.relays:
        lines.append(relay_line(v))
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
    lines.append(policy_line(v))
    return "\n".join(lines)


def render_summary(verdicts: list[Verdict]) -> str:
    """The many-targets table: one row per target, then the counts per status."""
    rows = [("TARGET", "VERDICT", "AGREE", "NEEDED", "YOUR KEY")]
    for v in verdicts:
        host = f"[{v.host}]" if ":" in v.host else v.host
        rows.append((f"{host}:{v.port}", v.status, v.count, str(v.required),
                     _short(v.client.to_json()["pin"] or v.client.status)))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    counts: dict[str, int] = {}
    for v in verdicts:
        counts[v.status] = counts.get(v.status, 0) + 1
    lines.append("")
    lines.append(f"{len(verdicts)} targets: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    if verdicts:
        lines.append(policy_line(verdicts[0]).split("; \"")[0])
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


def _targets(args: argparse.Namespace) -> list[tuple[str, int]]:
    """Every target from the arguments and --hosts-file, parsed, in order, without duplicates."""
    texts: list[str] = list(args.targets)
    if args.hosts_file:
        if args.hosts_file == "-":
            content = sys.stdin.read()
        else:
            try:
                content = Path(args.hosts_file).read_text()
            except FileNotFoundError:
                raise Exit(EX_NOINPUT, f"parallax check: no such file: {args.hosts_file}") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise Exit(EX_NOINPUT, f"parallax check: cannot read {args.hosts_file}: {exc}") from None
        for line in content.splitlines():
            text = line.split("#", 1)[0].strip()
            if text:
                texts.append(text)
    if not texts:
        raise Exit(EX_USAGE, f"parallax check: no target given; name one or more ({TARGET_FORMS}) or use --hosts-file")
    out: list[tuple[str, int]] = []
    for text in texts:
        try:
            t = split_target(text)
        except InputError as exc:
            raise Exit(EX_USAGE, f"parallax check: {exc}") from None
        if t not in out:
            out.append(t)
    return out


def _policy(args: argparse.Namespace) -> Policy:
    policy = get_policy(args.policy)
    custom: dict[str, Any] = {
        "max_age": args.max_age, "quorum_fraction": args.quorum_fraction,
        "quorum_duration": args.quorum_duration, "min_regions": args.min_regions,
    }
    if args.quorum_fraction is not None:
        custom["rule"] = "fraction"
    if args.proxies is not None:
        custom["proxies"] = args.proxies
    if any(v is not None for v in custom.values()):
        policy = policy.with_overrides(name=f"{policy.name}+custom", **custom)
    return policy


def _common_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """verify_with_notaries arguments shared by one and many targets."""
    memory = None
    if not args.no_memory:
        from client.keymemory import KeyStore

        memory = KeyStore()
    expect: list[str | bytes] = [e if e.startswith("sha256/") else read_file(e) for e in args.expect_interceptor or ()]
    return dict(timeout=args.timeout, wait_all=args.wait_all, subset=args.subset, relay=args.relay,
                via=args.via or (), isolate=not args.no_isolate, expect_interceptor=expect, memory=memory)


def _cmd_check(args: argparse.Namespace) -> int:
    from client.api import verify_with_notaries

    targets = _targets(args)
    if len(targets) > 1:
        for flag in ("connect_to", "observed", "sni", "pin"):
            if getattr(args, flag):
                raise Exit(EX_USAGE, f"parallax check: --{flag.replace('_', '-')} needs exactly one target")
    if args.concurrency < 1:
        raise Exit(EX_USAGE, "parallax check: --concurrency must be at least 1")
    if args.via and not args.bundle and not find_bundle_path(None).exists():
        bundle = Bundle(())  # proxies only: no notary network needed (the policy decides what they can conclude)
    else:
        bundle = load_bundle(args.bundle, operator_keys(args))
    policy = _policy(args)
    if len(targets) > 1:
        return eventloop.run(_check_many(args, targets, bundle, policy))
    host, port = targets[0]
    connect_to = None
    if args.connect_to:
        h, p, addr, aport = args.connect_to
        if h:
            try:
                h = split_target(f"[{h}]:{p}" if ":" in h else f"{h}:{p}")[0]
            except InputError as exc:
                raise Exit(EX_USAGE, f"parallax check: --connect-to: {exc}") from None
        if h not in ("", host) or p != port:
            raise Exit(EX_USAGE, f"parallax check: --connect-to {h}:{p} does not name the target {host}:{port}")
        connect_to = (addr, aport)
    observed: Any = None
    if args.observed:
        observed = args.observed if args.observed.startswith("sha256/") else read_file(args.observed)
    verdict = eventloop.run(verify_with_notaries(
        host, port, bundle=bundle, policy=policy, observed=observed, connect_to=connect_to, sni=args.sni,
        **_common_kwargs(args),
    ))
    if args.json:
        print(json.dumps(verdict.to_json()))
    elif args.pin:
        if verdict.pin:
            print(verdict.pin)
        else:
            print(f"parallax check: no pin: {verdict.summary}", file=sys.stderr)
    else:
        print(render_table(verdict))
    return exit_code_for(verdict)


class _Progress:
    """A one-line progress counter on a terminal's stderr (nothing when stderr is not a terminal)."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total, self.done, self.stream = total, 0, stream
        self.on = stream.isatty()

    def step(self, label: str) -> None:
        self.done += 1
        if self.on:
            self.stream.write(f"\r\x1b[Kchecked {self.done}/{self.total}: {label}")
            self.stream.flush()

    def clear(self) -> None:
        if self.on:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


async def _check_many(args: argparse.Namespace, targets: list[tuple[str, int]], bundle: Bundle, policy: Policy) -> int:
    """Check every target, at most ``--concurrency`` at a time; print in input order as results arrive."""
    from client.api import verify_with_notaries
    from client.pool import NotaryPool

    gate = asyncio.Semaphore(args.concurrency)
    progress = _Progress(len(targets), sys.stderr)
    kwargs = _common_kwargs(args)

    session = NotaryPool()  # kept-alive connections to the notaries, shared by every check
    try:
        async def one(host: str, port: int) -> Verdict:
            async with gate:
                v = await verify_with_notaries(host, port, bundle=bundle, policy=policy, session=session, **kwargs)
            progress.step(f"{host}:{port} {v.status}")
            return v

        tasks = [asyncio.create_task(one(h, p)) for h, p in targets]
        verdicts: list[Verdict] = []
        try:
            for task in tasks:
                v = await task
                verdicts.append(v)
                if args.json:  # JSON Lines, streamed in input order
                    progress.clear()
                    sys.stdout.write(json.dumps(v.to_json()) + "\n")
                    sys.stdout.flush()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await session.close()
    progress.clear()
    if not args.json:
        print(render_summary(verdicts))
    return worst_exit_code([exit_code_for(v) for v in verdicts])


def add_check_command(sub: Any) -> None:
    """Register ``check``."""
    p = sub.add_parser(
        "check", help="ask the notaries whether they see the key you see",
        description="Ask the bundle's notaries which key they see for each target, compare with the key you see,\n"
                    "and print the verdict (exit 0 consistent, 1 an alarm, 2 undecided, 3 your declared\n"
                    "interceptor; with many targets, the worst).",
    )
    p.add_argument("targets", nargs="*", metavar="TARGET",
                   help=f"what to check: {TARGET_FORMS}; IDN names are fine; port 443 when none is given")
    p.add_argument("--hosts-file", metavar="FILE",
                   help="also check the targets in FILE, one per line ('#' starts a comment; '-' reads stdin)")
    p.add_argument("--concurrency", type=int, default=4, metavar="N",
                   help="with many targets, check at most N at a time")
    p.add_argument("--bundle", help="bundle file (default: $PARALLAX_BUNDLE, else bundle.json in the user config dir)")
    p.add_argument("--operator-key", action="append", metavar="KEY",
                   help="only accept a bundle signed by this base64 Ed25519 key (repeatable)")
    p.add_argument("--policy", default="mpic", choices=sorted(PRESETS), help=POLICY_HELP)
    p.add_argument("--json", action="store_true", help="print each verdict as one JSON object per line (JSON Lines)")
    p.add_argument("--pin", action="store_true", help="print only the agreed sha256/ pin (when consistent; one target)")
    p.add_argument("--connect-to", type=_parse_connect_to, metavar="HOST:PORT:ADDR:PORT",
                   help="point only this client's own probe at ADDR:PORT, like curl (one target)")
    p.add_argument("--observed", metavar="PIN|CERTFILE",
                   help="what you already saw, instead of probing: a sha256/ pin or a PEM/DER file (one target)")
    p.add_argument("--sni", help="server name to send (default: the target's host name; none for an IP address)")
    p.add_argument("--relay", default="none", metavar="auto|URL|none",
                   help="ask through an Oblivious HTTP relay: auto picks a relay notary of the bundle")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per notary and for your own probe")
    p.add_argument("--max-age", type=int, metavar="SECONDS",
                   help="accept notary observations up to this old (default: the policy's, 3600)")
    p.add_argument("--quorum-fraction", type=float, metavar="F",
                   help="custom: this fraction of the notaries asked must agree (0 < F <= 1; default: the policy's rule)")
    p.add_argument("--quorum-duration", type=int, metavar="SECONDS",
                   help="custom: count a notary only if it has seen the key for this long (default: the policy's, 0)")
    p.add_argument("--min-regions", type=int, metavar="N",
                   help="custom: agreeing notaries must span N regions (default: the policy's)")
    p.add_argument("--wait-all", action="store_true", help="wait for every notary instead of stopping once decided")
    p.add_argument("--subset", type=int, metavar="K",
                   help="ask a random K of the bundle's notaries only, for privacy (default: all)")
    p.add_argument("--via", action="append", type=_via, metavar="socks5[h]://HOST:PORT",
                   help="also probe through this SOCKS5 proxy (repeatable; socks5h: the proxy resolves the name); "
                        "an unsigned vantage, see --proxies")
    p.add_argument("--proxies", choices=("advisory", "count"),
                   help="how --via proxies weigh: advisory (shown, not counted) or count (each is one more vantage "
                        "in the quorum) (default: the policy's; advisory for notary policies)")
    p.add_argument("--no-isolate", action="store_true",
                   help="do not send fresh SOCKS credentials per proxy (Tor stream isolation is on by default)")
    p.add_argument("--expect-interceptor", action="append", metavar="PIN|CAFILE",
                   help="a declared interceptor: its key (sha256/...) or issuing CA certificate (PEM/DER file); "
                        "a match reads intercepted_as_expected (exit 3), not mitm_suspected")
    p.add_argument("--no-memory", action="store_true",
                   help="neither consult nor update the memory of keys seen ($PARALLAX_STATE_DIR or the user state dir)")
    p.set_defaults(func=_cmd_check)
