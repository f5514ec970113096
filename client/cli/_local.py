"""``parallax cluster`` and ``parallax demo``: notaries and a site on loopback, for trying Parallax."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

from notary import eventloop
from client.cli._common import EX_USAGE, Exit

__all__ = ["add_local_commands"]


def _cmd_cluster(args: argparse.Namespace) -> int:
    from client.cluster import local_cluster

    if args.notaries < 1:
        raise Exit(EX_USAGE, "parallax cluster: --notaries must be at least 1")
    if args.base_port and not 1 <= args.base_port <= 65536 - args.notaries:
        raise Exit(EX_USAGE, "parallax cluster: --base-port leaves no room for the notaries' ports")
    ports = list(range(args.base_port, args.base_port + args.notaries)) if args.base_port else None

    async def run() -> None:
        async with local_cluster(args.notaries, args.data_dir, ports=ports) as c:
            print(c.bundle_path, flush=True)
            for e in c.bundle.notaries:
                print(f"  {e.name} {e.url} {e.region} {e.key_id}", file=sys.stderr, flush=True)
            print("parallax cluster: running in the foreground; Ctrl-C stops it", file=sys.stderr, flush=True)
            await asyncio.Event().wait()

    try:
        eventloop.run(run())
    except KeyboardInterrupt:
        pass
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from client.demo import run_demo

    if args.data_dir:
        return eventloop.run(run_demo(Path(args.data_dir), verbose=bool(getattr(args, "verbose", 0))))
    with tempfile.TemporaryDirectory(prefix="parallax-demo-") as data:
        return eventloop.run(run_demo(Path(data), verbose=bool(getattr(args, "verbose", 0))))


def add_local_commands(sub: Any) -> None:
    """Register ``cluster`` and ``demo``."""
    c = sub.add_parser(
        "cluster", help="run N local notaries on loopback and write their bundle (foreground, until Ctrl-C)",
        description="Run N notaries on 127.0.0.1 in the foreground until Ctrl-C; print the bundle path on\n"
                    "stdout (and each notary on stderr).  The notaries may probe loopback targets.",
    )
    c.add_argument("--notaries", type=int, default=3, metavar="N", help="how many notaries (at least 1)")
    c.add_argument("--data-dir", required=True, metavar="DIR", help="keys, stores and bundle.json go here")
    c.add_argument("--base-port", type=int, default=0, metavar="PORT",
                   help="first of N consecutive ports (default: 0, ephemeral ports)")
    c.set_defaults(func=_cmd_cluster)

    d = sub.add_parser(
        "demo", help="local cluster + local site: a clean check and an intercepted one",
        description="Start a local HTTPS site and 3 notaries on loopback, check the site (consistent), then\n"
                    "check it through an intercepting proxy (mitm_suspected).  Exit 0 when both verdicts are right.",
    )
    d.add_argument("--data-dir", metavar="DIR",
                   help="keep the notaries' keys and stores here (default: a temporary directory, removed afterwards)")
    d.set_defaults(func=_cmd_demo)
