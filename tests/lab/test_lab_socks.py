"""SOCKS5 vantages in the network-namespace lab, with a real SOCKS5 server (Debian's Dante, ``danted``).

The lab of :mod:`tests.lab.netlab` (its own instance for this module), plus Dante in
notary-2's location (``n2``, 10.77.22.2:1080): "a machine the user owns elsewhere".
The client reaches it through its ISP and the core; the proxy reaches the site
through the core only, so the ISP's interceptions and the client's resolver are on
the client's path and not on the proxy's.  Each scenario asserts the verdict, the
exit code and what the proxy vantage saw:

1. an interceptor on the client's router: ``mitm_suspected`` with notaries, and
   with the proxy alone under ``--policy proxies``;
2. a DNS spoof in the client's resolver: caught through ``socks5h://`` (the proxy
   resolves the name), *not* through ``socks5://`` (the client's spoofed answer is
   handed to the proxy): the reason socks5h exists;
3. proxies that are unreachable (port closed; no route) are reported per vantage,
   and the check still decides from the notaries;
4. trust on first use with a second opinion: a remembered key, then an intercepted
   one that no quorum confirms -> ``key_changed``.

Needs root, ``ip netns`` and ``danted``; skips otherwise, unless ``PARALLAX_REQUIRE_LAB=1``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Iterator

import pytest

from tests.lab.netlab import ATTACKER_IP, REPO, SITE_IP, SITE_NAME, SITE_PORT, CheckRun, Lab, Proc, Undo, notary_ip
from tests.lab.test_lab import _assert, _intercept_on, _site_pin, lab, undo  # noqa: F401  (fixtures reused)
from tests.support.dante import dante_config, danted_unavailable_reason

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

PROXY_ROLE = "n2"
PROXY_IP = notary_ip(2)
PROXY_PORT = 1080
VIA_H = f"socks5h://{PROXY_IP}:{PROXY_PORT}"
VIA_LOCAL = f"socks5://{PROXY_IP}:{PROXY_PORT}"


@pytest.fixture(scope="module")
def proxy(lab: Lab) -> Iterator[Proc]:  # noqa: F811
    reason = danted_unavailable_reason()
    if reason:
        if os.environ.get("PARALLAX_REQUIRE_LAB") == "1":
            pytest.fail(f"PARALLAX_REQUIRE_LAB=1 but the SOCKS lab cannot run: {reason}")
        pytest.skip(reason)
    conf = dante_config(lab.workdir / "danted.conf", listen=PROXY_IP, port=PROXY_PORT, external=PROXY_IP,
                        clients="10.77.0.0/16")
    proc = lab.spawn(PROXY_ROLE, ["danted", "-f", str(conf), "-N", "1", "-p", str(lab.workdir / "danted.pid")],
                     name="danted", listen_port=PROXY_PORT)
    try:
        yield proc
    finally:
        lab.stop(proc)


def check(lab: Lab, *extra: str, bundle: bool = True, memory: bool = False, timeout: float = 5.0) -> CheckRun:  # noqa: F811
    """``parallax check --json`` in the client's namespace; ``bundle=False``: no notary network at all."""
    argv = [lab.parallax, "check", f"{SITE_NAME}:{SITE_PORT}", "--json", "--timeout", f"{timeout:g}", "--wait-all",
            *(["--bundle", str(lab.bundle_path)] if bundle else []), *([] if memory else ["--no-memory"]), *extra]
    env = {**lab.env, "PARALLAX_BUNDLE": str(lab.workdir / "no-bundle-here.json")}
    start = time.monotonic()
    proc = subprocess.run(["ip", "netns", "exec", lab.ns("client"), *argv], capture_output=True, text=True, env=env,
                          cwd=str(REPO), timeout=timeout * 4 + 30)
    try:
        verdict = json.loads(proc.stdout)
    except ValueError:
        verdict = {}
    run = CheckRun(proc.returncode, verdict, time.monotonic() - start, proc.stdout, proc.stderr)
    for v in verdict.get("vantages", []):
        print(f"  vantage {v['name']}: {v['result']} counted={v['counted']} pins={v['pins']} ({v['reason']})")
    return run


def vantage(run: CheckRun, name: str) -> dict:
    found = {v["name"]: v for v in run.verdict.get("vantages", [])}
    assert name in found, run.describe()
    return found[name]


def test_proxy_path_is_clean(lab: Lab, proxy: Proc) -> None:  # noqa: F811
    run = check(lab, "--via", VIA_H, "--via", VIA_LOCAL)
    _assert(run, "consistent", 0)
    for name in (VIA_H, VIA_LOCAL):
        v = vantage(run, name)
        assert v["result"] == "agrees" and v["pins"] == [_site_pin(lab)] and v["signed"] is False, run.describe()
    assert vantage(run, VIA_H)["ip"] is None and vantage(run, VIA_LOCAL)["ip"] == SITE_IP
    alone = check(lab, "--via", VIA_H, "--policy", "proxies", bundle=False)
    _assert(alone, "consistent", 0)
    assert alone.verdict["results"] == [] and (alone.verdict["agreeing"], alone.verdict["asked"]) == (1, 1)


def test_interceptor_on_clients_path_not_proxys(lab: Lab, undo: Undo, proxy: Proc) -> None:  # noqa: F811
    forged = _intercept_on(undo, "isp", "to-client")
    run = check(lab, "--via", VIA_H)
    _assert(run, "mitm_suspected", 1)
    assert run.verdict["client"]["pin"] == forged["pin"]
    v = vantage(run, VIA_H)
    assert v["result"] == "disagrees" and v["pins"] == [_site_pin(lab)] and not v["counted"], run.describe()
    # No notary network at all: the user's own proxy, under the policy that lets proxies decide.
    alone = check(lab, "--via", VIA_H, "--policy", "proxies", bundle=False)
    _assert(alone, "mitm_suspected", 1)
    assert alone.verdict["quorum_pins"] == [_site_pin(lab)]
    # The default policy does not let an unsigned proxy alone decide.
    default = check(lab, "--via", VIA_H, bundle=False)
    _assert(default, "insufficient", 2)
    assert lab.rule_packets("isp", "nat", "PREROUTING") > 0, "the REDIRECT rule never matched"


def test_dns_spoof_on_clients_resolver_is_caught_with_socks5h(lab: Lab, undo: Undo, proxy: Proc) -> None:  # noqa: F811
    spoofer = undo.actor("attacker", "site", "--listen", f"{ATTACKER_IP}:{SITE_PORT}", "--name", SITE_NAME,
                         "--org", "DNS spoofer CA", name="spoof-site")
    undo.hosts("client", {**Lab.default_hosts(), SITE_NAME: [ATTACKER_IP]})
    remote = check(lab, "--via", VIA_H, "--policy", "proxies", bundle=False)
    _assert(remote, "mitm_suspected", 1)
    assert remote.verdict["client"]["ip"] == ATTACKER_IP and remote.verdict["client"]["pin"] == spoofer.info["pin"]
    assert vantage(remote, VIA_H)["pins"] == [_site_pin(lab)]  # the proxy's resolver gave the real address
    # socks5:// hands the proxy the client's (spoofed) address: the proxy sees the spoofer too.
    local = check(lab, "--via", VIA_LOCAL, "--policy", "proxies", bundle=False)
    _assert(local, "consistent", 0)
    v = vantage(local, VIA_LOCAL)
    assert v["ip"] == ATTACKER_IP and v["pins"] == [spoofer.info["pin"]] and v["dns"] == "local", local.describe()


def test_unreachable_proxies_are_reported_not_fatal(lab: Lab, proxy: Proc) -> None:  # noqa: F811
    closed = f"socks5h://{PROXY_IP}:{PROXY_PORT + 1}"
    unrouted = "socks5h://10.77.99.2:1080"  # inside the lab's /16, but no router knows it
    run = check(lab, "--via", closed, "--via", unrouted, "--via", VIA_H, timeout=3)
    _assert(run, "consistent", 0)
    assert vantage(run, closed)["result"] == "proxy_failed" and "cannot connect to the proxy" in vantage(run, closed)["reason"]
    assert vantage(run, unrouted)["result"] == "proxy_failed", run.describe()
    assert vantage(run, VIA_H)["result"] == "agrees"
    assert run.elapsed < 3 * 4 + 30 and not run.stderr.strip(), run.describe()
    # Proxies alone, all failed: insufficient, never consistent and never an error exit.
    alone = check(lab, "--via", closed, "--policy", "proxies", bundle=False, timeout=3)
    _assert(alone, "insufficient", 2)


def test_remembered_key_then_unconfirmed_change(lab: Lab, undo: Undo, proxy: Proc) -> None:  # noqa: F811
    first = check(lab, "--via", VIA_H, memory=True)
    _assert(first, "consistent", 0)
    assert first.verdict["memory"]["change"] in ("first_use", "known")
    forged = _intercept_on(undo, "isp", "to-client")
    # The notaries are silenced on the client's path too: nobody confirms or refutes the new key.
    for i in range(1, lab.n + 1):
        undo.iptables("isp", "filter", "FORWARD", "-i", "to-client", "-d", notary_ip(i), "-j", "REJECT", insert=True)
    run = check(lab, memory=True, timeout=3)
    _assert(run, "key_changed", 1)
    assert run.verdict["client"]["pin"] == forged["pin"]
    assert run.verdict["memory"]["previous"] == [_site_pin(lab)]
