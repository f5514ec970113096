"""``parallax cluster`` and ``parallax demo``: notaries and a site on loopback, for trying Parallax."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["add_local_commands"]


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


def add_local_commands(sub: Any) -> None:
    """Register ``cluster`` and ``demo``."""
    c = sub.add_parser("cluster", help="run N local notaries on loopback and write their bundle")
    c.add_argument("--notaries", type=int, default=3)
    c.add_argument("--data-dir", required=True)
    c.add_argument("--base-port", type=int, default=0, help="first port (default: ephemeral)")
    c.set_defaults(func=_cmd_cluster)

    d = sub.add_parser("demo", help="local cluster + local site: a clean check and an intercepted one")
    d.add_argument("--data-dir")
    d.set_defaults(func=_cmd_demo)
