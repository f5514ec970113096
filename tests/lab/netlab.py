"""A multi-location network lab on one machine: ``ip netns`` hosts joined by veth pairs.

Topology (every address is in :data:`LAB_NET`, which exists only inside the
lab's namespaces; no namespace has a link to the host or a default route)::

    client 10.77.3.2 ── isp (the client's router, 10.77.3.1 / 10.77.2.2)
                              │
                            core (the "internet" router, .1 on every link)
       ┌──────────┬───────────┼────────────┬────────────┐
    site        attacker   notary-1     notary-2     notary-3
    10.77.10.2  10.77.11.2 10.77.21.2   10.77.22.2   10.77.23.2
    (+ .21, .22 for the CDN scenario)

Every namespace gets ``/etc/netns/NAME/{hosts,resolv.conf,nsswitch.conf,host.conf}``
(``ip netns exec`` bind-mounts them over ``/etc``): names resolve from the hosts
file only, and the resolver points at the namespace's own loopback.

Names are ``pxlab-<pid>-<worker>-<role>`` so that parallel runs never collide;
:func:`sweep_stale` removes what a killed run left behind (namespaces whose pid
is gone, their processes and their ``/etc/netns`` directories).  :meth:`Lab.close`
stops every process the lab started (by pid), deletes its namespaces (which
takes their interfaces and iptables rules with them) and its ``/etc/netns``
directories, and :meth:`Lab.leftovers` proves nothing remains.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

PREFIX = "pxlab-"
LAB_NET = "10.77.0.0/16"
SITE_NAME = "site.lab.test"
CDN_NAME = "cdn.lab.test"
SITE_PORT = 4443
NOTARY_PORT = 7000
SITE_IP = "10.77.10.2"
CDN_IPS = ("10.77.10.21", "10.77.10.22")
ATTACKER_IP = "10.77.11.2"
CLIENT_IP = "10.77.3.2"
ISP_CLIENT_SIDE = "10.77.3.1"
REPO = Path(__file__).resolve().parents[2]
NETNS_ETC = Path("/etc/netns")


def notary_ip(i: int) -> str:
    return f"10.77.{20 + i}.2"


def parallax_exe() -> str:
    exe = Path(sys.executable).with_name("parallax")
    if exe.exists():
        return str(exe)
    found = shutil.which("parallax")
    if not found:
        raise RuntimeError("the parallax console script is not installed (pip install -e .)")
    return found


def _run(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"python" in cmdline or b"pytest" in cmdline


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def lab_unsupported_reason() -> str | None:
    """None when this machine can run the lab, else why not (for ``pytest.skip``)."""
    if sys.platform != "linux":
        return "the lab needs Linux network namespaces"
    if os.geteuid() != 0:
        return "the lab needs root (ip netns, veth, iptables)"
    for tool in ("ip", "iptables", "ss"):
        if not shutil.which(tool):
            return f"the lab needs {tool!r} (apt-get install iproute2 iptables)"
    probe = f"{PREFIX}{os.getpid()}-probe"
    try:
        proc = _run("ip", "netns", "add", probe, check=False)
        if proc.returncode != 0:
            return f"cannot create a network namespace: {proc.stderr.strip()}"
        proc = _run("ip", "netns", "exec", probe, "iptables", "-t", "nat", "-L", "-n", check=False)
        if proc.returncode != 0:
            return f"iptables (nat table) does not work in a network namespace: {proc.stderr.strip()}"
    finally:
        _run("ip", "netns", "del", probe, check=False)
    return None


def lab_namespaces() -> list[str]:
    out = _run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(PREFIX)]


def _kill_namespace_processes(ns: str) -> None:
    for _ in range(3):
        pids = [int(p) for p in _run("ip", "netns", "pids", ns, check=False).stdout.split() if p.isdigit()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def _remove_namespace(ns: str) -> None:
    _kill_namespace_processes(ns)
    _run("ip", "netns", "del", ns, check=False)
    shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)


def sweep_stale() -> list[str]:
    """Remove namespaces (and /etc/netns dirs) of lab runs whose process is gone.  Returns their names."""
    stale = set()
    names = set(lab_namespaces())
    if NETNS_ETC.is_dir():
        names |= {p.name for p in NETNS_ETC.iterdir() if p.name.startswith(PREFIX)}
    for ns in names:
        m = re.match(re.escape(PREFIX) + r"(\d+)-", ns)
        if m and not _pid_alive(int(m.group(1))):
            stale.add(ns)
    for ns in sorted(stale):
        _remove_namespace(ns)
    with contextlib.suppress(OSError):
        if NETNS_ETC.is_dir() and not any(NETNS_ETC.iterdir()):
            NETNS_ETC.rmdir()
    return sorted(stale)


@dataclass
class Proc:
    role: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log: Path
    info: dict[str, Any] = field(default_factory=dict)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class CheckRun:
    code: int
    verdict: dict[str, Any]
    elapsed: float
    stdout: str
    stderr: str

    def by_name(self) -> dict[str, dict[str, Any]]:
        return {r["name"]: r for r in self.verdict.get("results", [])}

    def describe(self) -> str:
        rows = [f"exit={self.code} status={self.verdict.get('status')} elapsed={self.elapsed:.1f}s "
                f"client={self.verdict.get('client')}"]
        for r in self.verdict.get("results", []):
            rows.append(f"  {r['name']}: {r['result']} counted={r['counted']} pins={r['pins']} ips={r['ips']} ({r['reason']})")
        if self.stderr.strip():
            rows.append(f"  stderr: {self.stderr.strip()[:500]}")
        return "\n".join(rows)


class Lab:
    """The namespaces, links, processes and files of one lab run."""

    def __init__(self, workdir: Path, notaries: int = 3) -> None:
        worker = re.sub(r"[^A-Za-z0-9]", "", os.environ.get("PYTEST_XDIST_WORKER", "m"))[:6] or "m"
        self.tag = f"{PREFIX}{os.getpid()}-{worker}"
        self.workdir = workdir
        self.n = notaries
        self.roles = ["core", "isp", "client", "site", "attacker", *[f"n{i}" for i in range(1, notaries + 1)]]
        self.created: list[str] = []
        self.procs: list[Proc] = []
        self.notaries: dict[int, Proc] = {}
        self.site: Proc | None = None
        self.bundle_path = workdir / "bundle.json"
        self.parallax = parallax_exe()
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                    "PYTHONDONTWRITEBYTECODE": "1"}
        self.env.pop("PARALLAX_BUNDLE", None)
        self.env["PARALLAX_STATE_DIR"] = str(workdir / "state")  # the lab client's own key memory, never the user's

    # -- names and commands -------------------------------------------------------------
    def ns(self, role: str) -> str:
        return f"{self.tag}-{role}"

    def sh(self, role: str, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return _run("ip", "netns", "exec", self.ns(role), *cmd, check=check, timeout=timeout)

    def iptables(self, role: str, *rule: str) -> None:
        self.sh(role, "iptables", *rule)

    def rule_packets(self, role: str, table: str, chain: str) -> int:
        """Packets matched by the rules of one chain (iptables counters): proof that a rule was hit."""
        out = self.sh(role, "iptables", "-t", table, "-L", chain, "-n", "-v", "-x").stdout
        return sum(int(line.split()[0]) for line in out.splitlines()[2:] if line.split() and line.split()[0].isdigit())

    # -- building -------------------------------------------------------------------------
    def build(self) -> None:
        for role in self.roles:
            ns = self.ns(role)
            _run("ip", "netns", "add", ns)
            self.created.append(ns)
            self._write_etc(role, self.default_hosts())
            self.sh(role, "ip", "link", "set", "lo", "up")
        # core <-> every location; isp <-> client
        self._link("core", "to-isp", "10.77.2.1/24", "isp", "up0", "10.77.2.2/24")
        self._link("isp", "to-client", "10.77.3.1/24", "client", "up0", "10.77.3.2/24")
        self._link("core", "to-site", "10.77.10.1/24", "site", "up0", f"{SITE_IP}/24")
        self._link("core", "to-atk", "10.77.11.1/24", "attacker", "up0", f"{ATTACKER_IP}/24")
        for i in range(1, self.n + 1):
            self._link("core", f"to-n{i}", f"10.77.{20 + i}.1/24", f"n{i}", "up0", f"{notary_ip(i)}/24")
        for role in ("core", "isp"):
            self.sh(role, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self.sh("core", "ip", "route", "add", "10.77.3.0/24", "via", "10.77.2.2")
        self.sh("isp", "ip", "route", "add", LAB_NET, "via", "10.77.2.1")
        self.sh("client", "ip", "route", "add", LAB_NET, "via", ISP_CLIENT_SIDE)
        for role, gw in [("site", "10.77.10.1"), ("attacker", "10.77.11.1"),
                         *[(f"n{i}", f"10.77.{20 + i}.1") for i in range(1, self.n + 1)]]:
            self.sh(role, "ip", "route", "add", LAB_NET, "via", gw)

    def _link(self, a: str, a_if: str, a_addr: str, b: str, b_if: str, b_addr: str) -> None:
        # Created directly inside the two namespaces: never an interface in the host's namespace.
        _run("ip", "link", "add", a_if, "netns", self.ns(a), "type", "veth", "peer", "name", b_if, "netns", self.ns(b))
        for role, ifname, addr in ((a, a_if, a_addr), (b, b_if, b_addr)):
            self.sh(role, "ip", "addr", "add", addr, "dev", ifname)
            self.sh(role, "ip", "link", "set", ifname, "up")

    @staticmethod
    def default_hosts() -> dict[str, list[str]]:
        return {SITE_NAME: [SITE_IP], CDN_NAME: list(CDN_IPS)}

    def _write_etc(self, role: str, hosts: dict[str, list[str]]) -> None:
        d = NETNS_ETC / self.ns(role)
        d.mkdir(parents=True, exist_ok=True)
        self.write_hosts(role, hosts)
        (d / "resolv.conf").write_text("# parallax lab: no DNS server; names come from the hosts file\n"
                                       "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        (d / "host.conf").write_text("multi on\n")
        try:
            base = Path("/etc/nsswitch.conf").read_text()
        except OSError:
            base = ""
        lines = [ln for ln in base.splitlines() if not ln.startswith("hosts:")]
        (d / "nsswitch.conf").write_text("\n".join([*lines, "hosts: files"]) + "\n")

    def write_hosts(self, role: str, hosts: dict[str, list[str]]) -> None:
        """Rewrite a namespace's hosts file in place (running processes see it: same inode)."""
        lines = ["127.0.0.1 localhost", "::1 localhost"]
        for name, ips in hosts.items():
            lines += [f"{ip} {name}" for ip in ips]
        with open(NETNS_ETC / self.ns(role) / "hosts", "w") as f:
            f.write("\n".join(lines) + "\n")

    # -- processes --------------------------------------------------------------------------
    def spawn(self, role: str, argv: Sequence[str], *, name: str, ready_line: bool = False,
              listen_port: int | None = None, timeout: float = 20) -> Proc:
        log = self.workdir / f"{name}.log"
        with open(log, "ab") as err, open(log.with_suffix(".out"), "ab") as out:
            popen = subprocess.Popen(
                ["ip", "netns", "exec", self.ns(role), *argv],
                stdout=subprocess.PIPE if ready_line else out, stderr=err,
                env=self.env, cwd=str(REPO), preexec_fn=_set_pdeathsig,
            )
        proc = Proc(role, list(argv), popen, log)
        self.procs.append(proc)
        deadline = time.monotonic() + timeout
        if ready_line:
            assert popen.stdout is not None
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or popen.poll() is not None:
                    raise RuntimeError(f"{name} did not become ready: {proc.log_text()[-2000:]}")
                r, _, _ = select.select([popen.stdout], [], [], min(left, 0.5))
                if r:
                    line = popen.stdout.readline()
                    if not line:
                        continue
                    proc.info = json.loads(line)
                    break
        if listen_port is not None:
            self.wait_listening(role, listen_port, proc, deadline)
        return proc

    def wait_listening(self, role: str, port: int, proc: Proc, deadline: float) -> None:
        while True:
            out = self.sh(role, "ss", "-Hltn", f"sport = :{port}", check=False).stdout
            if out.strip():
                return
            if proc.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{' '.join(proc.argv[:3])} in {role} is not listening on {port}: {proc.log_text()[-2000:]}")
            time.sleep(0.05)

    def stop(self, proc: Proc) -> None:
        if proc.popen.poll() is None:
            proc.popen.terminate()
            try:
                proc.popen.wait(5)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(5)
        for stream in (proc.popen.stdout, proc.popen.stderr):
            if stream is not None:
                with contextlib.suppress(Exception):
                    stream.close()
        if proc in self.procs:
            self.procs.remove(proc)

    def actor(self, role: str, *args: str, name: str) -> Proc:
        return self.spawn(role, [sys.executable, "-m", "tests.lab.actors", *args], name=name, ready_line=True)

    # -- the standing cast: the target site and the notaries ---------------------------------
    def start_site(self) -> Proc:
        self.site = self.actor("site", "site", "--listen", f"{SITE_IP}:{SITE_PORT}", "--name", SITE_NAME,
                               "--org", "Lab site CA", name="site")
        return self.site

    def start_notary(self, i: int) -> Proc:
        data = self.workdir / f"notary-{i}"
        argv = [self.parallax, "serve", "--data-dir", str(data), "--init",
                "--listen", f"{notary_ip(i)}:{NOTARY_PORT}", "--name", f"notary-{i}", "--region", f"lab-region-{i}",
                "--allow-network", LAB_NET, "--allow-port", str(SITE_PORT),
                "--ttl", "0", "--timeout", "5", "--export-entry", str(data / "entry.json")]
        proc = self.spawn(f"n{i}", argv, name=f"notary-{i}", listen_port=NOTARY_PORT)
        self.notaries[i] = proc
        return proc

    def stop_notary(self, i: int) -> None:
        self.stop(self.notaries.pop(i))

    def start_all(self) -> None:
        self.start_site()
        for i in range(1, self.n + 1):
            self.start_notary(i)
        # The deployment's bundle step, as the compose "bundle" service runs it: merge the
        # entries each notary exported on its first start (--init --export-entry).
        entries = [str(self.workdir / f"notary-{i}" / "entry.json") for i in range(1, self.n + 1)]
        subprocess.run([self.parallax, "bundle", "merge", *entries, "-o", str(self.bundle_path)],
                       check=True, capture_output=True, timeout=60)

    # -- the client ---------------------------------------------------------------------------
    def check(self, *extra: str, target: str = f"{SITE_NAME}:{SITE_PORT}", timeout: float = 5.0,
              wait_all: bool = True) -> CheckRun:
        """``parallax check --json`` run in the client's namespace (``--wait-all``: every notary's result is known;
        ``--no-memory``: scenarios do not depend on one another through the key memory)."""
        argv = [self.parallax, "check", target, "--bundle", str(self.bundle_path), "--json", "--timeout", f"{timeout:g}",
                "--no-memory", *(["--wait-all"] if wait_all else []), *extra]
        return self._client_json(argv, timeout)

    def verify(self, *extra: str, target: str = f"{SITE_NAME}:{SITE_PORT}", timeout: float = 5.0) -> CheckRun:
        """``verify_with_notaries(..., wait_all=True)`` (the library call) run in the client's namespace."""
        argv = [sys.executable, "-m", "tests.lab.actors", "verify", target, "--bundle", str(self.bundle_path),
                "--timeout", f"{timeout:g}", "--wait-all", *extra]
        return self._client_json(argv, timeout)

    def _client_json(self, argv: list[str], timeout: float) -> CheckRun:
        start = time.monotonic()
        proc = subprocess.run(["ip", "netns", "exec", self.ns("client"), *argv], capture_output=True, text=True,
                              env=self.env, cwd=str(REPO), timeout=timeout * 4 + 30)
        elapsed = time.monotonic() - start
        try:
            verdict = json.loads(proc.stdout)
        except ValueError:
            verdict = {}
        return CheckRun(proc.returncode, verdict, elapsed, proc.stdout, proc.stderr)

    def client_popen(self, argv: list[str]) -> subprocess.Popen[str]:
        return subprocess.Popen(["ip", "netns", "exec", self.ns("client"), *argv], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=self.env, cwd=str(REPO),
                                preexec_fn=_set_pdeathsig)

    # -- teardown ---------------------------------------------------------------------------
    def close(self) -> None:
        for proc in list(self.procs):
            with contextlib.suppress(Exception):
                self.stop(proc)
        for ns in self.created:
            _remove_namespace(ns)
        for role in self.roles:
            shutil.rmtree(NETNS_ETC / self.ns(role), ignore_errors=True)
        with contextlib.suppress(OSError):
            if NETNS_ETC.is_dir() and not any(NETNS_ETC.iterdir()):
                NETNS_ETC.rmdir()
        self.created.clear()

    def leftovers(self) -> list[str]:
        """Anything of this run that still exists: namespaces, /etc/netns dirs, processes."""
        left = [f"namespace {ns}" for ns in lab_namespaces() if ns.startswith(self.tag + "-")]
        if NETNS_ETC.is_dir():
            left += [f"/etc/netns/{p.name}" for p in NETNS_ETC.iterdir() if p.name.startswith(self.tag + "-")]
        left += [f"process {p.popen.pid} ({p.role})" for p in self.procs if p.popen.poll() is None]
        return left


def host_snapshot() -> dict[str, Any]:
    """The host namespace's interfaces and iptables rules (to prove the lab never touched them)."""
    links = sorted(line.split(":")[1].strip().split("@")[0]
                   for line in _run("ip", "-o", "link", "show", check=False).stdout.splitlines() if ":" in line)
    rules = []
    save = shutil.which("iptables-save")
    if save:
        out = _run(save, check=False).stdout
        rules = [re.sub(r"\[\d+:\d+\]", "", ln) for ln in out.splitlines() if ln and not ln.startswith("#")]
    return {"links": links, "iptables": rules}


#: Names of the interfaces the lab creates (always inside its namespaces; see Lab._link).
LAB_IFNAME = re.compile(r"^(to-(isp|client|site|atk|n\d+)|up0)$")
_LAB_NET_PREFIX = LAB_NET.split(".0.0/")[0] + "."  # "10.77."


def host_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What the lab left in the host namespace, comparing two :func:`host_snapshot` results.

    Only what the lab itself could have created counts: an interface with one of the lab's
    names (:data:`LAB_IFNAME`), and an iptables rule that names the lab's address range or one
    of its interfaces.  Anything else that appears meanwhile (a container engine's ``docker0``,
    its ``br-*`` bridges and ``veth*`` pairs, its ``DOCKER`` chains) is not the lab's doing and is
    ignored, so a lab run stays correct on a machine where other things happen.
    """
    changes = [f"host interface {name}" for name in sorted(set(after["links"]) - set(before["links"]))
               if LAB_IFNAME.match(name)]
    for rule in sorted(set(after["iptables"]) - set(before["iptables"])):
        words = rule.split()
        if _LAB_NET_PREFIX in rule or any(LAB_IFNAME.match(w) for w in words) or PREFIX in rule:
            changes.append(f"host iptables rule {rule}")
    return changes


class Undo:
    """Per-scenario changes, undone in reverse order (also when the scenario fails)."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.steps: list[tuple[str, Callable[[], object]]] = []

    def add(self, what: str, fn: Callable[[], object]) -> None:
        self.steps.append((what, fn))

    def iptables(self, role: str, table: str, chain: str, *spec: str, insert: bool = False) -> None:
        self.lab.iptables(role, "-t", table, "-I" if insert else "-A", chain, *spec)
        self.add(f"iptables {role} {chain} {' '.join(spec)}",
                 lambda: self.lab.iptables(role, "-t", table, "-D", chain, *spec))

    def actor(self, role: str, *args: str, name: str) -> Proc:
        proc = self.lab.actor(role, *args, name=name)
        self.add(f"stop {name}", lambda: self.lab.stop(proc))
        return proc

    def hosts(self, role: str, hosts: dict[str, list[str]]) -> None:
        self.lab.write_hosts(role, hosts)
        self.add(f"restore hosts of {role}", lambda: self.lab.write_hosts(role, Lab.default_hosts()))

    def run(self, role: str, cmd: Sequence[str], undo: Sequence[str]) -> None:
        self.lab.sh(role, *cmd)
        self.add(" ".join(undo), lambda: self.lab.sh(role, *undo, check=False))

    def notary_down(self, i: int) -> None:
        self.lab.stop_notary(i)
        self.add(f"restart notary-{i}", lambda: self.lab.start_notary(i))

    def close(self) -> list[str]:
        errors = []
        while self.steps:
            what, fn = self.steps.pop()
            try:
                fn()
            except Exception as exc:
                errors.append(f"{what}: {exc}")
        return errors


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While the lab runs, SIGTERM unwinds like Ctrl-C, so that teardown still happens."""
    def raise_interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        old = signal.signal(signal.SIGTERM, raise_interrupt)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
