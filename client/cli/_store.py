"""``parallax store info|compact --data-dir D``: the size of a notary's observation store, and
compacting it (retention applied, write-ahead log checkpointed, ``VACUUM``).

The logic lives in :mod:`notary.retention`.  ``compact`` takes the data dir's
lock, so it refuses (exit 78) while a ``parallax serve`` runs on the same dir;
``info`` only reads.  A missing store exits 66; an unreadable one 74.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from client.cli._common import EX_NOINPUT, Exit

__all__ = ["add_store_commands"]


def _db(args: argparse.Namespace) -> Path:
    from notary.config import DB_FILE

    path = Path(args.data_dir) / DB_FILE
    if not path.exists():
        raise Exit(EX_NOINPUT, f"parallax store: no observation store in {args.data_dir}")
    return path


def _cmd_info(args: argparse.Namespace) -> int:
    from notary.retention import store_info

    print(json.dumps(store_info(_db(args)), indent=2))
    return 0


def _cmd_compact(args: argparse.Namespace) -> int:
    from notary.datadir import DataDirLock
    from notary.retention import RetentionLimits, compact

    path = _db(args)
    limits = RetentionLimits(max_age_days=args.max_age_days, max_bytes=args.max_bytes)
    with DataDirLock(args.data_dir, "parallax serve or store compact"):
        print(json.dumps(compact(path, limits, int(time.time())), indent=2))
    return 0


def add_store_commands(sub: Any) -> None:
    """Register ``store info`` and ``store compact``."""
    from notary.retention import RetentionLimits

    defaults = RetentionLimits()
    p = sub.add_parser("store", help="a notary's observation store: size, compaction")
    cmds = p.add_subparsers(dest="store_command", required=True, metavar="{info,compact}")
    # (examples: client/cli/_help.py EXAMPLES)
    q = cmds.add_parser("info", help="print the store's size and counts as JSON")
    q.add_argument("--data-dir", required=True, metavar="DIR", help="the notary's data directory")
    q.set_defaults(func=_cmd_info)
    q = cmds.add_parser("compact", help="apply retention and give free space back (not while serving)")
    q.add_argument("--data-dir", required=True, metavar="DIR", help="the notary's data directory")
    q.add_argument("--max-age-days", type=int, default=defaults.max_age_days,
                   help=f"keep rounds at most this many days (default {defaults.max_age_days})")
    q.add_argument("--max-bytes", type=int, default=defaults.max_bytes,
                   help=f"keep at most this many bytes of live data (default {defaults.max_bytes})")
    q.set_defaults(func=_cmd_compact)
