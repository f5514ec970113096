"""Benchmark 11 (P1a's floor): the least client CPU a warm check can cost, against one direct handshake.

A warm check cannot cost less than three things it must do: its own TLS probe
(the client's observation), one request and answer over a kept-alive
connection to each of 5 notaries, and one Ed25519 signature check per answer
(the freshness statement: signatures are checked before anything is counted).
This script measures each of them with nothing else around it, so the closing
figure is a lower bound for P1a on this machine, whatever the client's code.

Setup:    one local TLS site (own process); 5 minimal HTTP servers (bench/_serve.py
          ``static``, each its own process, answering POST /v1/observe with the
          same bytes a real notary's answer has: ``--answer-bytes``).
Measured  (client CPU, time.process_time, interleaved rounds, median):
          baseline  one direct TLS handshake, as client_latency.py's baseline;
          probe     client.api.client_probe (Parallax's own probe, as in a check);
          ask5      5 requests at once, one per server, over kept-alive
                    connections, with a bare asyncio Protocol that only waits for
                    the declared length (no parsing, no JSON, no checks);
          verify5   5 Ed25519 verifications (PyNaCl, as notary.core.keys) of a
                    freshness-statement-sized message;
          ideal     the three together as a check runs them: the probe started,
                    ask5 meanwhile, then verify5, then the probe awaited.
Figures:  floor = probe + ask5 + verify5; floor / baseline is the lowest P1a this
          machine allows (goal 1.5); what is left under the goal, per answer, is
          the budget for receiving, parsing, checking and judging each answer.
          ideal's wall-clock median / baseline's: the P1 warm (goal 2) of a check
          that did only this, against notaries as cheap as a bare aiohttp handler
          (no signing, no cache, no guard): printed, no goal.
Runs:     ``--runs`` (200) rounds; bounded by ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
from pathlib import Path
from typing import Any, Awaitable, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from notary import eventloop  # noqa: E402
from bench._common import (  # noqa: E402
    busy_processes, client_ctx, interleaved, median, raw_handshake, save, serve, verdict_line,
)

NAME = "client_floor"
GOAL_CPU = 1.5  # P1a's goal (client_latency.py)
GOAL_WARM = 2.0  # P1 warm's goal (client_latency.py)
NOTARIES = 5


class _Exchange(asyncio.Protocol):
    """One kept-alive connection: send a request, wait for ``expect`` bytes (head + declared body)."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.got = 0
        self.expect = 0
        self.waiter: asyncio.Future[None] | None = None
        self.head = b""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if not self.expect:  # the first answer: learn its total length once
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            length = next(int(line.split(b":", 1)[1]) for line in self.head[:end].split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            self.expect = end + 4 + length
            data = self.head
        self.got += len(data)
        if self.got >= self.expect and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def ask(self, request: bytes) -> None:
        self.got = 0
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        await self.waiter


async def measure(args: argparse.Namespace) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    import nacl.signing

    from client.api import client_probe
    from notary.core import Target

    with tempfile.TemporaryDirectory(prefix="parallax-bench-floor-") as tmp, contextlib.ExitStack() as stack:
        body_file = Path(tmp) / "answer.json"
        body_file.write_bytes(b'{"a":"' + b"x" * max(0, args.answer_bytes - 8) + b'"}')
        servers = [stack.enter_context(serve("static", {"body_file": str(body_file)})) for _ in range(NOTARIES)]
        sites = stack.enter_context(serve("sites", {"count": 1, "names": ["localhost"]}))
        port = sites.info["ports"][0]
        target = Target.parse("localhost", port)
        ctx = client_ctx()
        loop = asyncio.get_running_loop()
        conns: list[_Exchange] = []
        requests: list[bytes] = []
        for s in servers:
            host, _, sport = s.info["url"].removeprefix("http://").partition(":")
            _, proto = await loop.create_connection(_Exchange, host, int(sport))
            conns.append(proto)
            body = b'{"target":{"host":"localhost","port":%d},"nonce":"%s"}' % (port, b"n" * 32)
            requests.append(b"POST /v1/observe HTTP/1.1\r\nHost: %s:%s\r\nContent-Type: application/json\r\n"
                            b"Content-Length: %d\r\n\r\n%s" % (host.encode(), sport.encode(), len(body), body))
        key = nacl.signing.SigningKey.generate()
        signed = [key.sign(bytes([i]) * args.statement_bytes) for i in range(NOTARIES)]
        verify_key = key.verify_key

        async def baseline() -> None:
            await raw_handshake("127.0.0.1", port, "localhost", ctx)

        async def probe() -> None:
            v = await client_probe(target)
            assert v.status == "ok", v

        async def ask5() -> None:
            await asyncio.gather(*(c.ask(r) for c, r in zip(conns, requests)))

        async def verify5() -> None:
            for sm in signed:
                verify_key.verify(sm)

        async def ideal() -> None:  # a warm check's irreducible parts, overlapped as verify_with_notaries does
            probing = asyncio.create_task(client_probe(target))
            await ask5()
            await verify5()
            assert (await probing).status == "ok"

        kinds: dict[str, Callable[[], Awaitable[Any]]] = {"baseline": baseline, "probe": probe, "ask5": ask5, "verify5": verify5,
                                                          "ideal": ideal}
        for _ in range(5):  # warm-up
            for fn in kinds.values():
                await fn()
        times, cpu = await interleaved(NAME, kinds, runs=args.runs, max_seconds=args.max_seconds)
        for c in conns:
            c.transport.close()
        return times, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--max-seconds", type=float, default=60.0)
    ap.add_argument("--answer-bytes", type=int, default=1400, help="size of each server's answer body")
    ap.add_argument("--statement-bytes", type=int, default=160, help="size of each signed message")
    args = ap.parse_args()
    print(f"[{NAME}] busiest processes before the run: {busy_processes()}")
    times, cpu = eventloop.run(measure(args))
    c = {k: median(v) * 1e6 for k, v in cpu.items()}
    for k in cpu:
        print(f"[{NAME}] {k:9s} client CPU median {c[k]:8.1f} us  (n={len(cpu[k])})")
    floor = c["probe"] + c["ask5"] + c["verify5"]
    ratio = floor / c["baseline"]
    left = (GOAL_CPU * c["baseline"] - floor) / NOTARIES
    wall = {k: median(v) * 1e3 for k, v in times.items()}
    ideal = wall["ideal"] / wall["baseline"]
    print(f"[{NAME}] ideal warm check: wall median {wall['ideal']:.3f} ms against {wall['baseline']:.3f} ms for one "
          f"direct handshake: {ideal:.2f}, the lowest P1 warm (goal {GOAL_WARM}) with notaries as cheap as a bare handler")
    print(f"[{NAME}] floor = probe + ask5 + verify5 = {floor:.1f} us; P1a's goal ({GOAL_CPU}) allows "
          f"{GOAL_CPU * c['baseline']:.1f} us, leaving {left:.1f} us per answer for receiving, parsing, "
          f"checking and judging it")
    lines = [verdict_line(f"{NAME} (P1a floor)", f"{floor:.1f} us client CPU (probe + 5 kept-alive asks + 5 verifies)",
                          f"{c['baseline']:.1f} us client CPU per direct handshake", ratio,
                          f"a lower bound for P1a, whose goal is <= {GOAL_CPU}", None)]
    save(NAME, {"cpu_s": cpu, "times_s": times, "cpu_medians_us": c, "floor_us": floor, "ratio": ratio,
                "wall_medians_ms": wall, "ideal_warm_ratio": ideal,
                "left_per_answer_us": left}, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
