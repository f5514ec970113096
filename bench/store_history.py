"""Benchmark: a cold probe's store job for a long-watched target vs a new one.

Every cold probe ends in one job on the notary's store thread: commit the round
(``synchronous=FULL``: an fsync) and read the target's key history, which the
notary signs into the observation.  The cost of that job should not grow with
how long a target has been watched.

Store:    one real SQLite file (``SQLiteStore``, in this process).  Target
          ``old.bench.test`` gets ``--rounds`` (26,000: one probe every 5
          minutes for the default 90 days of retention) rounds first, through
          the public ``add`` (many at once: group commits), with a new key every
          ``--key-every`` rounds (30 days); ``new.bench.test`` gets 10.
Subject:  ``add`` of one more round of ``old.bench.test``, then its key history,
          timed (wall and this process's CPU, store thread included).
Baseline: the same for ``new.bench.test``.  Interleaved, ``--runs`` each.
Goal:     subject / baseline <= 1.5 (wall): the store job costs the same at any age.

Also printed: the time of the scan that schema 3 ran for the key history
(every ok observation of the target, grouped by key) on the same file, for
both targets.  That query is what ``notary.sightings`` replaced.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import busy_processes, median, save, verdict_line  # noqa: E402
from notary import eventloop  # noqa: E402
from notary.core import ProbeResult, Target  # noqa: E402
from notary.store import SQLiteStore  # noqa: E402

NAME = "store_history"
GOAL = 1.5
T0 = 1_700_000_000
OLD, NEW = Target.parse("old.bench.test", 443), Target.parse("new.bench.test", 443)
SCAN_V3 = ("SELECT o.spki_sha256, min(o.observed_at), max(o.observed_at) FROM observations o"
           " JOIN rounds r ON r.id = o.round_id WHERE r.host=? AND r.port=? AND r.sni=? AND o.status='ok'"
           " GROUP BY o.spki_sha256 ORDER BY max(o.observed_at) DESC, o.spki_sha256 LIMIT 32")


def chains(n: int) -> list[tuple[bytes, ...]]:
    import trustme
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    ca = trustme.CA()
    return [(x509.load_pem_x509_certificate(ca.issue_cert("old.bench.test", "new.bench.test").cert_chain_pems[0]
                                            .bytes()).public_bytes(Encoding.DER),) for _ in range(n)]


async def fill(store: SQLiteStore, target: Target, rounds: int, keys: list[tuple[bytes, ...]], key_every: int) -> None:
    batch = 1000
    for start in range(0, rounds, batch):
        await asyncio.gather(*(
            store.add([ProbeResult.success(target, "192.0.2.1", T0 + 300 * i, "TLSv1.3",
                                           keys[(i // key_every) % len(keys)])], all_addresses=False)
            for i in range(start, min(rounds, start + batch))))


async def one(store: SQLiteStore, target: Target, at: int, chain: tuple[bytes, ...]) -> int:
    history = await store.add([ProbeResult.success(target, "192.0.2.1", at, "TLSv1.3", chain)], all_addresses=False)
    return len(history or ())


def scan_ms(path: Path, target: Target, runs: int = 5) -> float:
    db = sqlite3.connect(path)
    try:
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            db.execute(SCAN_V3, (target.host, target.port, target.sni or "")).fetchall()
            times.append(time.perf_counter() - t0)
        return 1000 * median(times)
    finally:
        db.close()


async def run(args: argparse.Namespace, workdir: Path) -> int:
    keys = chains(1 + args.rounds // args.key_every)
    path = workdir / "observations.sqlite3"
    store = await SQLiteStore.open(path)
    try:
        t0 = time.monotonic()
        await fill(store, OLD, args.rounds, keys, args.key_every)
        await fill(store, NEW, 10, keys, args.key_every)
        print(f"[{NAME}] filled {args.rounds} rounds of {OLD.host} ({len(keys)} keys) and 10 of {NEW.host} "
              f"in {time.monotonic() - t0:.1f} s; {await store.count()} observations")
        wall: dict[str, list[float]] = {"subject": [], "baseline": []}
        cpu: dict[str, list[float]] = {"subject": [], "baseline": []}
        at = T0 + 300 * args.rounds
        for i in range(args.runs):
            order = [("subject", OLD), ("baseline", NEW)]
            for label, target in (order if i % 2 == 0 else order[::-1]):
                at += 1
                c0, w0 = time.process_time(), time.perf_counter()
                n = await one(store, target, at, keys[-1])
                wall[label].append(time.perf_counter() - w0)
                cpu[label].append(time.process_time() - c0)
                if n == 0:
                    raise SystemExit(f"{target.host}: the store returned no key history")
    finally:
        await store.close()
    subject, baseline = 1000 * median(wall["subject"]), 1000 * median(wall["baseline"])
    ratio = subject / baseline
    old_scan, new_scan = scan_ms(path, OLD), scan_ms(path, NEW)
    print(f"[{NAME}] CPU per store job (this process, store thread included, median of {args.runs}): "
          f"{1000 * median(cpu['subject']):.3f} ms old target, {1000 * median(cpu['baseline']):.3f} ms new target")
    print(f"[{NAME}] schema 3's key-history scan on this file: {old_scan:.3f} ms old target, {new_scan:.3f} ms new")
    line = verdict_line(NAME, f"{subject:.3f} ms (add + key history, {args.rounds}-round target)",
                        f"{baseline:.3f} ms (10-round target)", ratio, f"goal <= {GOAL}", ratio <= GOAL)
    save(NAME, {"wall_ms": {k: [1000 * x for x in v] for k, v in wall.items()},
                "cpu_ms": {k: [1000 * x for x in v] for k, v in cpu.items()},
                "scan_v3_ms": {"old": old_scan, "new": new_scan}, "ratio": ratio, "args": vars(args)}, [line])
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=26_000, help="rounds of the long-watched target")
    ap.add_argument("--key-every", type=int, default=8_640, help="rounds between key changes (30 days)")
    ap.add_argument("--runs", type=int, default=40)
    args = ap.parse_args()
    print(f"[{NAME}] busiest processes before the run: {busy_processes()}")
    with tempfile.TemporaryDirectory(prefix="parallax-bench-") as d:
        return eventloop.run(run(args, Path(d)))


if __name__ == "__main__":
    sys.exit(main())
