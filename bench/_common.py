"""Shared helpers of the benchmarks: child processes, raw TLS handshakes, results.

Every server a benchmark needs runs in a child process started from
``bench/_serve.py``; it prints one ``READY {json}`` line and exits by itself
when its stdin closes (the benchmark ended or died) or after ``lifetime``
seconds.  All addresses are on loopback.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import platform
import signal
import ssl
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
PY = sys.executable


class Child:
    """A child process started by a benchmark (a server or a load generator)."""

    def __init__(self, args: list[str], *, ready_timeout: float = 60.0, name: str = "child") -> None:
        self.name = name
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, cwd=str(ROOT), text=True,
        )
        self.info: dict[str, Any] = {}
        deadline = time.monotonic() + ready_timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{name} exited before READY (rc={self.proc.poll()})")
            if line.startswith("READY "):
                self.info = json.loads(line[6:])
                return
        self.stop()
        raise RuntimeError(f"{name} not ready within {ready_timeout}s")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        """Close stdin (the child exits by itself), then SIGTERM/SIGKILL this child's pid only."""
        if self.proc.poll() is not None:
            return
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(5)
            return
        except subprocess.TimeoutExpired:
            pass
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def __enter__(self) -> "Child":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(role: str, spec: dict[str, Any], *, lifetime: float = 900.0, ready_timeout: float = 120.0) -> Child:
    """Start ``bench/_serve.py ROLE`` with a JSON spec; returns when it printed READY."""
    spec = dict(spec, lifetime=lifetime)
    return Child([PY, str(BENCH / "_serve.py"), role, json.dumps(spec)], ready_timeout=ready_timeout, name=role)


def free_port() -> int:
    """An unused loopback TCP port (bound and released: a small race, fine on loopback)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli() -> list[str]:
    """The ``parallax`` command line of the code under test (before/after the CLI moved to client/cli/)."""
    module = "notary.cli" if (ROOT / "notary" / "cli.py").exists() else "client.cli"
    return [PY, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); from {module} import run_main; run_main()"]


def wait_http(url: str, timeout: float = 60.0) -> None:
    """Until GET ``url`` answers 200 (a server child finished starting)."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} not up within {timeout}s")
        time.sleep(0.1)


class ServeProcesses:
    """``n`` notaries, each its own ``parallax serve`` process on loopback, and their bundle.

    Each allows loopback targets on any port (a benchmark's sites), has its
    rate limit out of the way, and exits when this object stops it (SIGTERM to
    its own pid, then SIGKILL).  ``extra`` flags are passed to every one.
    """

    def __init__(self, n: int, workdir: Path, *, extra: list[str] | None = None, ttl: int = 300) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.urls: list[str] = []
        entries = []
        try:
            for i in range(n):
                d = workdir / f"notary-{i + 1}"
                port = free_port()
                args = _cli() + [
                    "serve", "--data-dir", str(d), "--init", "--listen", f"127.0.0.1:{port}",
                    "--name", f"notary-{i + 1}", "--region", f"local-{i + 1}",
                    "--allow-network", "127.0.0.0/8", "--allow-port", "any", "--ttl", str(ttl),
                    "--rate", "1000000", "--burst", "2000000", "--export-entry", str(d / "entry.json"),
                    *(extra or []),
                ]
                self.procs.append(subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                   stderr=subprocess.DEVNULL, cwd=str(ROOT)))
                self.urls.append(f"http://127.0.0.1:{port}")
            for i, url in enumerate(self.urls):
                wait_http(url + "/healthz")
                entries.append(json.loads((workdir / f"notary-{i + 1}" / "entry.json").read_text()))
        except BaseException:
            self.stop()
            raise
        self.bundle_path = workdir / "bundle.json"
        self.bundle_path.write_text(json.dumps({"version": 1, "notaries": entries}, indent=2) + "\n")

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def __enter__(self) -> "ServeProcesses":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_load(spec: dict[str, Any], *, timeout: float = 300.0) -> dict[str, Any]:
    """Run ``bench/_load.py`` (a separate process) once and return its JSON result."""
    out = subprocess.run(
        [PY, str(BENCH / "_load.py"), json.dumps(spec)], stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=timeout, cwd=str(ROOT),
    )
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed rc={out.returncode}: {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def client_ctx(alpn: list[str] | None = None) -> ssl.SSLContext:
    """A TLS client context without verification (the raw baseline's)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


async def raw_handshake(ip: str, port: int, sni: str | None, ctx: ssl.SSLContext, timeout: float = 10.0) -> bytes:
    """Connect, complete a TLS handshake, take the leaf certificate, abort.  Returns the DER leaf.

    The handshake is complete at the server too: one pass of the loop before the
    abort lets the client's last flight (its Finished) leave.  uvloop queues a
    transport's writes until the end of the loop pass, so an abort straight after
    the handshake dropped that flight there, and the server never finished its
    side (the prober always sends it; ``tests/test_bench_common.py``).
    """
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(ip, port, ssl=ctx, server_hostname=sni)
    try:
        await asyncio.sleep(0)
        obj = writer.get_extra_info("ssl_object")
        return obj.getpeercert(binary_form=True) if obj else b""
    finally:
        writer.transport.abort()


async def interleaved(name: str, kinds: dict[str, Callable[[], Awaitable[Any]]], *, runs: int,
                      max_seconds: float) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Time each of ``kinds`` once per round, alternating the order every round (noise hits all alike).

    Returns wall and CPU seconds per call, by kind.  Bounded by ``runs`` rounds and ``max_seconds``.
    """
    times: dict[str, list[float]] = {k: [] for k in kinds}
    cpu: dict[str, list[float]] = {k: [] for k in kinds}
    deadline = time.monotonic() + max_seconds
    for i in range(runs):
        for k in (list(kinds) if i % 2 == 0 else list(reversed(kinds))):
            c0, t0 = time.process_time(), time.perf_counter()
            await kinds[k]()
            times[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
        if time.monotonic() > deadline:
            print(f"[{name}] time bound reached after {i + 1} runs")
            break
    return times, cpu


def process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system, every thread) used so far by process ``pid``; None where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def group_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) so far of ``pid`` and each of its descendants (e.g. workers), by pid.

    Empty when psutil (the ``bench`` extra) is missing or ``pid`` is gone.  psutil reads
    /proc, whose counters move in clock ticks (10 ms here): sum over many operations.
    """
    try:
        import psutil
    except ImportError:  # the bench extra is not installed: no CPU figures
        return {}
    try:
        root = psutil.Process(pid)
        out = {}
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
        return out
    except psutil.Error:
        return {}


def median(xs: Iterable[float]) -> float:
    return statistics.median(list(xs))


def load_snapshot() -> str:
    """What else is using the machine: the load average and the busiest other processes."""
    try:
        la = os.getloadavg()
    except OSError:
        la = (float("nan"),) * 3
    return f"loadavg {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}, cpus {os.cpu_count()}"


def busy_processes(top: int = 5) -> list[str]:
    """The processes using the most CPU right now (ps), to note noise from others."""
    try:
        out = subprocess.run(["ps", "-eo", "pid,pcpu,comm", "--sort=-pcpu"], capture_output=True, text=True, timeout=5)
        return [ln.strip() for ln in out.stdout.splitlines()[1: top + 1]]
    except (OSError, subprocess.SubprocessError):
        return []


def decode_envelope_payload(env: dict[str, Any]) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(base64.b64decode(env["payload"]))
    return payload


def answer_source(result: dict[str, Any]) -> str:
    """``fresh``/``cached`` of one observe result: protocol 2 keeps it in the freshness leaf, 1 in the payload."""
    if "freshness" in result:
        return str(json.loads(base64.b64decode(result["freshness"]["leaf"]))["source"])
    return str(decode_envelope_payload(result["envelopes"][0])["source"])


def verdict_line(name: str, subject: str, baseline: str, ratio: float, goal: str, met: bool | None) -> str:
    status = "n/a (no goal set)" if met is None else ("MET" if met else "MISSED")
    return f"RESULT {name}: subject={subject}, baseline={baseline}, ratio={ratio:.3f} ({goal}): {status}"


def save(name: str, record: dict[str, Any], lines: list[str]) -> Path:
    """Write the figures to bench/results/NAME-<timestamp>.json and print the RESULT lines."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    from notary import eventloop

    loop = eventloop.chosen()  # every process of the run: this one, bench/_serve.py, bench/_load.py, parallax serve
    record = dict(record, result_lines=lines, host=platform.node(), python=platform.python_version(),
                  load=load_snapshot(), timestamp=stamp, loop=loop)
    path = RESULTS / f"{name}-{stamp}.json"
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"\n[{load_snapshot()}; event loop {loop} ({eventloop.ENV}); results saved to {path.relative_to(ROOT)}]")
    for ln in lines:
        print(ln)
    return path
