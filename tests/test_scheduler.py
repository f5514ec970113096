"""Probe-slot starvation (issue 8, item 2): per-client and per-address caps, fair turns,
a bounded queue and a deadline after which a probe is a signed ``busy`` observation.

The scheduler's own tests run real asyncio tasks (no sockets are needed to test who
gets a slot).  The end-to-end test runs a real notary, real tarpit listeners on
loopback (accept TCP, never answer) and a real TLS server; clients come from
distinct 127.0.0.x source addresses.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from pathlib import Path
from typing import AsyncIterator

import aiohttp
from aiohttp import web

from notary.config import NotaryConfig
from notary.core import AddressPolicy, ProbeResult, SigningKey, Target, parse_networks
from notary.core.freshness import verify_answer
from notary.errors import BusyError
from notary.prober import ProbeLimits, Prober
from notary.scheduler import ProbeScheduler, SchedulerLimits, request_context
from notary.server import SERVICE, create_app
from notary.service import ServiceLimits
from tests.support.tls import make_ca, server_context, tls_server

LOOPBACK = AddressPolicy(parse_networks(["127.0.0.0/8"]), None)


async def _hold(s: ProbeScheduler, client: str, host: str, ips: list[str], log: list[str],
                release: asyncio.Event, deadline: float | None = None) -> str:
    with request_context(client, deadline):
        try:
            async with s.admit(host, ips):
                log.append(f"{client}:{host}")
                await release.wait()
                return "ran"
        except BusyError:
            return "busy"


async def test_global_slots_go_round_robin_between_clients() -> None:
    s = ProbeScheduler(SchedulerLimits(max_concurrent=2, per_client=2, per_host=100, per_address=100, queue_timeout=30))
    log: list[str] = []
    gates = [asyncio.Event() for _ in range(8)]
    # Client A queues six probes first, then B queues two: B must not wait behind all of A's.
    tasks = [asyncio.create_task(_hold(s, "A", f"a{i}", [f"192.0.2.{i}"], log, gates[i])) for i in range(6)]
    await asyncio.sleep(0)
    tasks += [asyncio.create_task(_hold(s, "B", f"b{i}", [f"198.51.100.{i}"], log, gates[6 + i])) for i in range(2)]
    await asyncio.sleep(0.01)
    assert log == ["A:a0", "A:a1"]
    for i in range(4):  # free the slots one by one, in grant order
        gates[int(log[i][3]) if log[i][0] == "A" else 6 + int(log[i][3])].set()
        await asyncio.sleep(0.01)
    assert log[:6] == ["A:a0", "A:a1", "A:a2", "B:b0", "A:a3", "B:b1"]  # turns alternate; FIFO would give a2..a5 first
    for g in gates:
        g.set()
    assert await asyncio.gather(*tasks) == ["ran"] * 8


async def test_per_client_cap_leaves_slots_to_others() -> None:
    s = ProbeScheduler(SchedulerLimits(max_concurrent=10, per_client=3, per_host=100, per_address=100, queue_timeout=30))
    log: list[str] = []
    gate = asyncio.Event()
    tasks = [asyncio.create_task(_hold(s, "A", f"a{i}", [f"192.0.2.{i}"], log, gate)) for i in range(8)]
    await asyncio.sleep(0.01)
    assert len(log) == 3 and s.inflight == 3
    tasks.append(asyncio.create_task(_hold(s, "B", "b", ["198.51.100.1"], log, gate)))
    await asyncio.sleep(0.01)
    assert log[-1] == "B:b" and s.inflight == 4
    gate.set()
    assert await asyncio.gather(*tasks) == ["ran"] * 9


async def test_per_address_cap_applies_across_names_and_waiters_hold_no_global_slot() -> None:
    s = ProbeScheduler(SchedulerLimits(max_concurrent=4, per_client=100, per_host=100, per_address=2, queue_timeout=30))
    log: list[str] = []
    gate = asyncio.Event()
    # Wildcard DNS: many names, one address.
    tasks = [asyncio.create_task(_hold(s, "A", f"n{i}.wild.example", ["192.0.2.66"], log, gate)) for i in range(10)]
    await asyncio.sleep(0.01)
    assert len(log) == 2 and s.inflight == 2  # the other eight wait without a global slot
    tasks.append(asyncio.create_task(_hold(s, "A", "other.example", ["198.51.100.1"], log, gate)))
    await asyncio.sleep(0.01)
    assert log[-1] == "A:other.example"
    gate.set()
    assert await asyncio.gather(*tasks) == ["ran"] * 11


async def test_deadline_and_bounded_queue_give_busy_and_leak_no_slot() -> None:
    s = ProbeScheduler(SchedulerLimits(max_concurrent=1, per_client=1, per_host=100, per_address=100,
                                       max_queued=2, queue_timeout=0.2))
    log: list[str] = []
    gate = asyncio.Event()
    holder = asyncio.create_task(_hold(s, "A", "h", ["192.0.2.1"], log, gate))
    await asyncio.sleep(0.01)
    waiters = [asyncio.create_task(_hold(s, "B", f"w{i}", [f"192.0.2.{10 + i}"], log, gate)) for i in range(3)]
    await asyncio.sleep(0.01)
    assert s.queued == 2
    assert waiters[2].done() and waiters[2].result() == "busy"  # the queue was full: busy at once
    assert await asyncio.gather(*waiters[:2]) == ["busy", "busy"]  # deadline passed
    assert s.queued == 0 and s.busy == 3
    gate.set()
    assert await holder == "ran"
    assert s.inflight == 0
    # Every slot came back: a new probe is admitted at once.
    again = asyncio.Event()
    again.set()
    assert await _hold(s, "C", "h", ["192.0.2.1"], log, again) == "ran"


# -- end to end --------------------------------------------------------------------------------

class WildcardResolver:
    """A fake at the DNS seam (wildcard DNS cannot be staged on loopback): every name under
    ``tarpit.test`` resolves to the tarpit's address, ``site.test`` to the TLS server."""

    def __init__(self, tarpit: str, site: str) -> None:
        self.tarpit, self.site = tarpit, site

    async def resolve(self, host: str, port: int) -> list[str]:
        return [self.tarpit] if host.endswith(".tarpit.test") else [self.site]


@contextlib.asynccontextmanager
async def tarpit(host: str) -> AsyncIterator[int]:
    """Accepts TCP connections and never answers (holds them until closed)."""
    held: list[asyncio.StreamWriter] = []

    async def handle(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        held.append(w)

    server = await asyncio.start_server(handle, host, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for w in held:
            w.transport.abort()
        server.close()
        await server.wait_closed()


def _session(source: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(source, 0)),
                                 timeout=aiohttp.ClientTimeout(total=60))


async def test_tarpit_flood_from_two_clients_does_not_starve_a_third(tmp_path: Path) -> None:
    ca = make_ca()
    key = SigningKey.generate()
    async with tarpit("127.0.0.66") as trap_port, tls_server(server_context(ca.issue_cert("site.test")), "127.0.0.77") as site:
        cfg = NotaryConfig(
            data_dir=tmp_path, policy=LOOPBACK, rate_per_client=1000.0, burst_per_client=1000,
            probe_limits=ProbeLimits(connect_timeout=2.0, handshake_timeout=2.0),
            service_limits=ServiceLimits(max_concurrent_probes=8, max_probes_per_client=4, max_probes_per_address=2,
                                         queue_timeout=1.0),
        )
        app = create_app(cfg, key, resolver=WildcardResolver("127.0.0.66", "127.0.0.77"))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site_ = web.TCPSite(runner, "127.0.0.1", 0)
        await site_.start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        finished: list[str] = []

        async def abuse(source: str, round_: int) -> list[str]:
            targets = [{"host": f"n{round_}-{i}-{source}.tarpit.test", "port": trap_port} for i in range(16)]
            async with _session(source) as s:
                async with s.post(base + "/v1/observe", json={"targets": targets, "nonce": f"abuse-nonce-{round_:04d}xx"}) as r:
                    assert r.status == 200
                    doc = await r.json()
            finished.append("abuse")
            return [o.status for res in doc["results"]
                    for o in verify_answer(res["envelopes"], res["freshness"], key.verify_key,
                                           nonce=f"abuse-nonce-{round_:04d}xx")]

        async def legit() -> str:
            async with _session("127.0.0.9") as s:
                async with s.post(base + "/v1/observe", json={
                        "targets": [{"host": "site.test", "port": site.port}], "nonce": "legit-nonce-0000000"}) as r:
                    assert r.status == 200
                    doc = await r.json()
            finished.append("legit")
            res = doc["results"][0]
            return verify_answer(res["envelopes"], res["freshness"], key.verify_key, nonce="legit-nonce-0000000")[0].status

        try:
            abusers = [asyncio.create_task(abuse(src, i)) for i in range(3) for src in ("127.0.0.2", "127.0.0.3")]
            await asyncio.sleep(0.3)  # the flood holds every tarpit slot it can get
            service = app[SERVICE]
            assert service.scheduler.inflight >= 1
            assert await legit() == "ok"
            statuses = [st for group in await asyncio.gather(*abusers) for st in group]
        finally:
            await runner.cleanup()
    # The legitimate request was answered while the flood was still waiting on its tarpits.
    assert finished[0] == "legit", finished
    # The flood got answers too: what found no slot before its deadline is a signed "busy".
    assert "busy" in statuses and set(statuses) <= {"busy", "timeout"}
    assert statuses.count("timeout") <= 4  # per_address=2: only a couple ever reached the tarpit


# -- name resolution (review 2, finding 2) --------------------------------------------------------

class ThreadedResolver:
    """A fake at the DNS seam (a silent authoritative server cannot be staged on loopback).

    Like :class:`notary.prober.SystemResolver` it runs a blocking lookup on a small pool of
    real threads, and a lookup nobody waits for any more keeps its thread: names under
    ``slow.test`` block until ``unblock`` is set (at most 10 s), then fail; other names
    answer ``address`` at once.  Records every name looked up.
    """

    def __init__(self, threads: int, address: str) -> None:
        self.pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="test-dns")
        self.unblock = threading.Event()
        self.address = address
        self.calls: list[str] = []

    def _lookup(self, host: str) -> list[str]:
        self.calls.append(host)
        if host.endswith(".slow.test"):
            self.unblock.wait(10)
            raise OSError("no answer from the name's servers")
        return [self.address]

    async def resolve(self, host: str, port: int) -> list[str]:
        return await asyncio.get_running_loop().run_in_executor(self.pool, self._lookup, host)

    def close(self) -> None:
        self.unblock.set()
        self.pool.shutdown(wait=True)


async def test_one_clients_slow_names_do_not_starve_anothers_resolution() -> None:
    resolver = ThreadedResolver(3, "127.0.0.1")
    s = ProbeScheduler(SchedulerLimits(max_resolving=3, resolving_per_client=2, queue_timeout=0.6))
    prober = Prober(LOOPBACK, clock=lambda: 1_700_000_000, resolver=resolver, admit=s.admit,
                    resolve_slot=s.resolve_slot, limits=ProbeLimits(resolve_timeout=0.3))
    try:
        async with tls_server(server_context(make_ca().issue_cert("fast.test"))) as srv:
            async def as_client(client: str, host: str) -> ProbeResult:
                with request_context(client, None):
                    [r] = await prober.probe(Target.parse(host, srv.port))
                    return r

            # The attacker asks from six addresses of one /24: they share that network's two lookups.
            attack = [asyncio.create_task(as_client(f"127.1.0.{i + 1}", f"n{i}.slow.test")) for i in range(6)]
            await asyncio.sleep(0.05)
            good = await as_client("127.0.0.1", "fast.test")
            assert good.status == "ok", good.detail
            results = await asyncio.gather(*attack)
        # The attacker's lookups: two ran and outlasted the resolve timeout, the rest found no slot in time.
        assert [r.status for r in results] == ["busy"] * 6
        details = sorted(r.detail or "" for r in results)
        assert sum("resolution timed out" in d for d in details) == 2
        assert sum("no resolution slot" in d for d in details) == 4
        assert s.resolving == 2  # the timed-out lookups still hold their threads, so their slots
        resolver.unblock.set()
        for _ in range(100):
            if s.resolving == 0:
                break
            await asyncio.sleep(0.02)
        assert s.resolving == 0
    finally:
        resolver.close()


async def test_a_timed_out_resolution_is_busy_and_never_stored_or_cached(tmp_path: Path) -> None:
    resolver = ThreadedResolver(4, "127.0.0.1")
    key = SigningKey.generate()
    cfg = NotaryConfig(data_dir=tmp_path, policy=LOOPBACK, rate_per_client=1000.0, burst_per_client=1000,
                       probe_limits=ProbeLimits(resolve_timeout=0.2))
    app = create_app(cfg, key, resolver=resolver)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site_ = web.TCPSite(runner, "127.0.0.1", 0)
    await site_.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        statuses = []
        for i in range(2):
            nonce = f"dns-timeout-nonce-{i:03d}"
            async with _session("127.0.0.5") as session:
                async with session.post(base + "/v1/observe", json={
                        "targets": [{"host": "x.slow.test"}], "nonce": nonce}) as r:
                    assert r.status == 200
                    doc = await r.json()
            res = doc["results"][0]
            [obs] = verify_answer(res["envelopes"], res["freshness"], key.verify_key, nonce=nonce)
            statuses.append(obs.status)
            assert "resolution timed out" in (obs.detail or "")
        assert statuses == ["busy", "busy"]
        assert resolver.calls == ["x.slow.test", "x.slow.test"]  # asked again: nothing was cached
        assert not await app[SERVICE].store.latest(Target.parse("x.slow.test", 443), all_addresses=False)
    finally:
        await runner.cleanup()
        resolver.close()
