"""Abuse benchmark (issue 8): does a notary keep serving well-behaved clients while it is attacked?

    python bench/abuse.py              # full run: 500 clients, 60 s per phase (about 5 minutes)
    python bench/abuse.py --quick      # smoke run: 50 clients, 6 s per phase

One real notary (``parallax serve``, a child process) serves a cached
observation of a local TLS site.  Well-behaved clients (one connection each,
each from its own 127.1.x.y source address) ask for it once every
``--interval`` seconds.  Four phases, each ``--duration`` seconds:

1. **baseline**: the well-behaved clients alone (5xx count, p50/p99 latency);
2. **abuse**: the same, plus two abusive addresses (16 connections each) asking
   as fast as they can: 429s to them, and the others' p99 against the
   baseline's (goal: ratio <= 2).  Phases 1 and 2 run as ``--rounds``
   interleaved segments (order alternating) whose latencies are pooled;
3. **slowloris**: the same, plus ``--slow`` connections (from 100 addresses)
   that trickle one header byte a second and reconnect when closed: legit p99
   (goal < 1 s) and every slow connection closed by the head deadline
   (10 s, goal: longest life <= 11 s);
4. **tarpit**: the same, plus two addresses flooding 16-target requests at
   tarpits (16 loopback listeners that accept and never answer, a fresh SNI each
   time so nothing is cached): legit p99 of a request that needs no network
   (goal < 1 s); a fresh probe of the real site is timed too (no goal).

Everything is on loopback and bounded in time; the attackers run in child
processes (``--role``) so their work is not charged to the measuring loop.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import resource
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from notary import eventloop  # noqa: E402

from bench._common import busy_processes, load_snapshot, save  # noqa: E402

HEAD_TIMEOUT = 10.0  # the notary's default head deadline (notary.connguard.ConnLimits)
PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _nonce() -> str:
    return secrets.token_urlsafe(18)


async def _http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> tuple[int, bytes, bool]:
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    close = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
        elif name.strip().lower() == b"connection" and value.strip().lower() == b"close":
            close = True
    body = await reader.readexactly(length)
    return status, body, close


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: notary\r\n\r\n".encode()


def _post(path: str, doc: dict[str, Any]) -> bytes:
    body = json.dumps(doc).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: notary\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class Tally:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.codes: dict[str, int] = {}
        self.errors = 0

    def add(self, status: int, seconds: float) -> None:
        self.codes[str(status)] = self.codes.get(str(status), 0) + 1
        self.latencies.append(seconds)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)

        def pct(p: float) -> float:
            return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")
        fivexx = sum(n for c, n in self.codes.items() if c.startswith("5"))
        return {"requests": len(lat), "codes": self.codes, "errors": self.errors, "5xx": fivexx,
                "p50_ms": round(pct(0.50) * 1000, 1), "p99_ms": round(pct(0.99) * 1000, 1)}


async def _client_loop(port: int, source: str, raw: Any, until: float, interval: float, tally: Tally) -> None:
    """One client: one kept-alive connection, a request every ``interval`` s (0: back to back)."""
    reader = writer = None
    await asyncio.sleep(random.uniform(0, interval or 0.01))
    while time.monotonic() < until:
        started = time.monotonic()
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 10)
            assert reader is not None
            status, _, close = await asyncio.wait_for(_http(reader, writer, raw() if callable(raw) else raw), 30)
            tally.add(status, time.monotonic() - started)
            if close:
                writer.transport.abort()
                reader = writer = None
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
            tally.errors += 1
            if writer is not None:
                writer.transport.abort()
            reader = writer = None
            await asyncio.sleep(0.05)
        if interval:
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
    if writer is not None:
        writer.transport.abort()


# -- child roles ----------------------------------------------------------------------------------

async def _role_abuser(spec: dict[str, Any]) -> dict[str, Any]:
    until = time.monotonic() + spec["duration"]
    tally = Tally()
    path = spec["path"]
    tasks = [asyncio.create_task(_client_loop(spec["port"], src, lambda: _get(path + _nonce()), until, 0, tally))
             for src in spec["sources"] for _ in range(spec["connections"])]
    await asyncio.gather(*tasks)
    return tally.summary()


async def _role_slow(spec: dict[str, Any]) -> dict[str, Any]:
    until = time.monotonic() + spec["duration"]
    lives: list[float] = []
    stats = {"made": 0, "closed_by_server": 0, "refused": 0}

    async def slot(source: str) -> None:
        while time.monotonic() < until:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", spec["port"], local_addr=(source, 0))
            except OSError:
                stats["refused"] += 1
                await asyncio.sleep(1)
                continue
            stats["made"] += 1
            opened = time.monotonic()
            closed = False
            try:
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                while time.monotonic() < until:
                    try:
                        data = await asyncio.wait_for(reader.read(4096), 1.0)
                        if not data:
                            closed = True
                            break
                    except TimeoutError:
                        pass
                    if writer.transport.is_closing():  # closed by the server as the read timed out
                        closed = True  # (uvloop raises RuntimeError on a write to a closed transport)
                        break
                    writer.write(b"X")  # one more header byte a second, never the end of the head
            except OSError:
                closed = True
            if closed:
                stats["closed_by_server"] += 1
                lives.append(time.monotonic() - opened)
            writer.transport.abort()

    sources = [f"127.3.{i // 250}.{i % 250 + 1}" for i in range(100)]
    await asyncio.gather(*(slot(sources[i % len(sources)]) for i in range(spec["count"])))
    return dict(stats, max_life_s=round(max(lives), 2) if lives else None,
                over_deadline=sum(1 for x in lives if x > HEAD_TIMEOUT + 1))


async def _role_tarpit(spec: dict[str, Any]) -> dict[str, Any]:
    held: list[asyncio.StreamWriter] = []

    async def handle(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        held.append(w)  # accept, never answer

    ips = [f"127.5.0.{i + 1}" for i in range(16)]
    first = await asyncio.start_server(handle, ips[0], 0)
    spec["tarpit_port"] = first.sockets[0].getsockname()[1]
    servers = [first] + [await asyncio.start_server(handle, ip, spec["tarpit_port"]) for ip in ips[1:]]
    until = time.monotonic() + spec["duration"]
    tally = Tally()
    statuses: dict[str, int] = {}

    def body() -> bytes:
        tag = secrets.token_hex(6)
        targets = [{"host": ip, "port": spec["tarpit_port"], "sni": f"{tag}-{k}.tarpit.example"}
                   for k, ip in enumerate(ips)]
        return _post("/v1/observe", {"targets": targets, "nonce": _nonce(), "max_age": 0})

    async def flood(source: str) -> None:
        reader = writer = None
        while time.monotonic() < until:
            started = time.monotonic()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", spec["port"], local_addr=(source, 0))
                assert reader is not None
                status, data, close = await asyncio.wait_for(_http(reader, writer, body()), 60)
                tally.add(status, time.monotonic() - started)
                if close:
                    writer.transport.abort()
                    reader = writer = None
                if status == 200:
                    for res in json.loads(data)["results"]:
                        for env in res["envelopes"]:
                            st = json.loads(base64.b64decode(env["payload"]))["status"]
                            statuses[st] = statuses.get(st, 0) + 1
                else:
                    await asyncio.sleep(0.05)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
                tally.errors += 1
                if writer is not None:
                    writer.transport.abort()
                reader = writer = None

    _ready({"tarpits": ips})
    await asyncio.gather(*(flood(src) for src in spec["sources"] for _ in range(spec["connections"])))
    for w in held:
        w.transport.abort()
    for s in servers:
        s.close()
    return dict(tally.summary(), probe_statuses=statuses)


def _ready(info: dict[str, Any]) -> None:
    print("READY " + json.dumps(info), flush=True)


def child_main(role: str, spec: dict[str, Any]) -> None:
    _raise_nofile()
    fn = {"abuser": _role_abuser, "slow": _role_slow, "tarpit": _role_tarpit}[role]
    if role != "tarpit":
        _ready({})
    result = eventloop.run(fn(spec))
    print("STATS " + json.dumps(result), flush=True)


class Child:
    def __init__(self, role: str, spec: dict[str, Any]) -> None:
        self.proc = subprocess.Popen([PY, __file__, "--role", role, "--spec", json.dumps(spec)],
                                     stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"{role} did not start: {line!r}")

    def result(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            return {"error": "timed out"}
        for line in out.splitlines():
            if line.startswith("STATS "):
                return json.loads(line[6:])
        return {"error": f"no stats (rc={self.proc.returncode})"}


# -- the run --------------------------------------------------------------------------------------

def _start_notary(data: Path, log: Path) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [PY, "-c", "from client.cli import run_main; run_main()", "--log-level", "WARNING", "serve",
         "--data-dir", str(data), "--init", "--listen", "127.0.0.1:0", "--region", "bench",
         "--allow-network", "127.0.0.0/8", "--allow-port", "any", "--ttl", "3600"],
        stdout=subprocess.PIPE, stderr=open(log, "w"), text=True, cwd=ROOT,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # printed once the listener is bound
    if not line:
        raise RuntimeError(f"notary did not start: {log.read_text()[-2000:]}")
    return proc, int(json.loads(line)["listening"].rsplit(":", 1)[1])


async def _legit_phase(port: int, path: str, clients: int, interval: float, duration: float,
                       tally: Tally | None = None) -> dict[str, Any]:
    tally = tally if tally is not None else Tally()
    until = time.monotonic() + duration
    sources = [f"127.1.{i // 250}.{i % 250 + 1}" for i in range(clients)]
    await asyncio.gather(*(_client_loop(port, src, lambda: _get(path + _nonce()), until, interval, tally)
                           for src in sources))
    return tally.summary()


async def _fresh_probes(port: int, site_port: int, duration: float) -> dict[str, Any]:
    tally = Tally()
    until = time.monotonic() + duration

    def raw() -> bytes:
        return _get(f"/v1/observe/127.0.0.1/{site_port}?max_age=0&nonce={_nonce()}")
    await _client_loop(port, "127.6.0.1", raw, until, 1.0, tally)
    return tally.summary()


async def run(args: argparse.Namespace) -> int:
    from client.devtools import make_cert_context, tls_site

    import tempfile
    work = Path(tempfile.mkdtemp(prefix="parallax-abuse-"))
    proc, port = _start_notary(work / "notary", work / "notary.log")
    rows: dict[str, dict[str, Any]] = {}
    extra: dict[str, Any] = {}
    try:
        async with tls_site(make_cert_context("site.bench.test")) as site:
            path = f"/v1/observe/127.0.0.1/{site.port}?nonce="
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            status, body, _ = await _http(reader, writer, _get(path + _nonce()))  # warm the cache
            writer.close()
            assert status == 200, body
            d = args.duration

            # Baseline and abuse are measured in interleaved segments (order alternating each
            # round) and pooled, so noise from the shared machine falls on both alike.
            seg = d / args.rounds
            pooled = {"baseline": Tally(), "abuse": Tally()}
            abusers: list[dict[str, Any]] = []
            per_round: list[tuple[float, float]] = []
            print(f"phases 1-2/4 baseline and abuse (2 addresses at full speed): {args.clients} clients, "
                  f"{args.rounds} interleaved rounds of {seg:g}s each", flush=True)
            for rnd in range(args.rounds):
                order = ["baseline", "abuse"] if rnd % 2 == 0 else ["abuse", "baseline"]
                p99 = {}
                for cond in order:
                    t = Tally()
                    if cond == "abuse":
                        ab = Child("abuser", {"port": port, "path": path, "duration": seg, "connections": args.abuse_connections,
                                              "sources": ["127.2.0.1", "127.2.0.2"]})
                    p99[cond] = (await _legit_phase(port, path, args.clients, args.interval, seg, t))["p99_ms"]
                    pooled[cond].latencies += t.latencies
                    pooled[cond].errors += t.errors
                    for c, n in t.codes.items():
                        pooled[cond].codes[c] = pooled[cond].codes.get(c, 0) + n
                    if cond == "abuse":
                        abusers.append(await asyncio.to_thread(ab.result, 60))
                per_round.append((p99["baseline"], p99["abuse"]))
            rows["baseline"], rows["abuse"] = pooled["baseline"].summary(), pooled["abuse"].summary()
            codes: dict[str, int] = {}
            for a in abusers:
                for c, n in a.get("codes", {}).items():
                    codes[c] = codes.get(c, 0) + n
            extra["abusers"] = {"requests": sum(a.get("requests", 0) for a in abusers), "codes": codes}
            extra["rounds_p99_ms"] = per_round

            print(f"phase 3/4 slowloris: + {args.slow} slow connections", flush=True)
            ds = max(d, HEAD_TIMEOUT + 4)  # long enough for the head deadline to act
            sl = Child("slow", {"port": port, "duration": ds, "count": args.slow})
            rows["slowloris"] = await _legit_phase(port, path, args.clients, args.interval, ds)
            extra["slow"] = await asyncio.to_thread(sl.result, 60)

            print("phase 4/4 tarpit flood: + 2 addresses flooding tarpits", flush=True)
            tp = Child("tarpit", {"port": port, "duration": d, "connections": 4,
                                  "sources": ["127.4.0.1", "127.4.0.2"]})
            legit, fresh = await asyncio.gather(
                _legit_phase(port, path, args.clients, args.interval, d), _fresh_probes(port, site.port, d))
            rows["tarpit"] = legit
            extra["tarpit_flood"] = await asyncio.to_thread(tp.result, 90)
            extra["fresh_probe_during_flood"] = fresh
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    log_lines = (work / "notary.log").read_text().splitlines()

    print()
    print(f"{'phase':<12} {'requests':>9} {'5xx':>5} {'errors':>7} {'p50 ms':>8} {'p99 ms':>8}  codes")
    for name, r in rows.items():
        print(f"{name:<12} {r['requests']:>9} {r['5xx']:>5} {r['errors']:>7} {r['p50_ms']:>8} {r['p99_ms']:>8}  {r['codes']}")
    ab, sl, tp, fr = extra["abusers"], extra["slow"], extra["tarpit_flood"], extra["fresh_probe_during_flood"]
    print(f"abusers (2 addresses x 16 connections): requests={ab.get('requests')} codes={ab.get('codes')}")
    print("p99 ms per round (baseline, abuse): " + ", ".join(f"({b}, {a})" for b, a in extra["rounds_p99_ms"]))
    print(f"slowloris: connections made={sl.get('made')} closed by server={sl.get('closed_by_server')} "
          f"longest life={sl.get('max_life_s')}s over deadline={sl.get('over_deadline')} refused={sl.get('refused')}")
    print(f"tarpit flood: requests={tp.get('requests')} codes={tp.get('codes')} probe statuses={tp.get('probe_statuses')}")
    print(f"fresh probe of the real site during the flood: {fr}")
    print(f"notary log: {len(log_lines)} lines")

    base99 = rows["baseline"]["p99_ms"]
    goals = [
        ("abuse_no_5xx", sum(r["5xx"] for r in rows.values()), "5xx over all phases (goal 0)",
         sum(r["5xx"] for r in rows.values()) == 0),
        ("abuse_429s", ab.get("codes", {}).get("429", 0), "429s to the abusers (goal > 0)",
         ab.get("codes", {}).get("429", 0) > 0),
        ("abuse_p99_ratio", round(rows["abuse"]["p99_ms"] / base99, 3), f"legit p99 {rows['abuse']['p99_ms']} ms vs "
         f"baseline {base99} ms (goal ratio <= 2)", rows["abuse"]["p99_ms"] <= 2 * base99),
        ("slowloris_legit_p99", rows["slowloris"]["p99_ms"], "legit p99 ms under slowloris (goal < 1000)",
         rows["slowloris"]["p99_ms"] < 1000),
        ("slowloris_closed", sl.get("max_life_s"), f"longest slow connection s (goal <= {HEAD_TIMEOUT + 1:g}, "
         f"{sl.get('over_deadline')} over)", sl.get("over_deadline") == 0 and (sl.get("closed_by_server") or 0) > 0),
        ("tarpit_legit_p99", rows["tarpit"]["p99_ms"], "legit no-network p99 ms under a tarpit flood (goal < 1000)",
         rows["tarpit"]["p99_ms"] < 1000),
    ]
    lines = [f"RESULT {name}: value={value}, {what}: {'MET' if ok else 'MISSED'}" for name, value, what, ok in goals]
    print(f"[{load_snapshot()}; busiest: {'; '.join(busy_processes(3))}]")
    save("abuse", {"args": vars(args), "phases": rows, **extra, "notary_log_lines": len(log_lines)}, lines)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 50 clients, 100 slow connections, 6 s phases")
    p.add_argument("--clients", type=int, default=500)
    p.add_argument("--interval", type=float, default=2.0, help="seconds between a client's requests")
    p.add_argument("--duration", type=float, default=60.0, help="seconds per phase (at most 120)")
    p.add_argument("--slow", type=int, default=1000, help="slowloris connections")
    p.add_argument("--rounds", type=int, default=6, help="interleaved baseline/abuse rounds")
    p.add_argument("--abuse-connections", type=int, default=16, help="connections per abusive address")
    p.add_argument("--role", choices=["abuser", "slow", "tarpit"], help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.role:
        child_main(args.role, json.loads(args.spec))
        return 0
    if args.quick:
        args.clients, args.duration, args.slow = 50, 6.0, 100
    args.duration = min(args.duration, 120.0)
    _raise_nofile()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return eventloop.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
