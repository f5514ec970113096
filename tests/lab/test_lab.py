"""End-to-end scenarios in a multi-location network lab (``ip netns`` + veth + iptables).

One lab per module (see :mod:`tests.lab.netlab` for the topology): a target site,
3 notaries running ``parallax serve`` in their own namespaces, an attacker host,
a client behind an "ISP" router.  The client runs ``parallax check --json`` (and
``verify_with_notaries``) in its namespace; every scenario asserts the verdict and
the exit code.  Scenario changes (iptables rules, actors, hosts files, stopped
notaries) are undone after each test, pass or fail; the lab itself is torn down
after the module and checked to leave nothing behind.

Why 3 notaries: the default policy ``mpic`` needs n-1 of n for n <= 5, so 2 of 3,
from at least 2 regions.  With one notary's path intercepted, the other two
(two regions) still make the quorum: ``consistent_with_outliers``.  (5 notaries
would need 4 and give the same verdicts at almost twice the cost.)

Needs root and ``ip netns``; skips otherwise, unless ``PARALLAX_REQUIRE_LAB=1``
(set it in CI, which runs as root), in which case a missing prerequisite fails.
"""

from __future__ import annotations

import atexit
import json
import os
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.lab.netlab import (
    ATTACKER_IP,
    CDN_IPS,
    CDN_NAME,
    LAB_NET,
    NOTARY_PORT,
    SITE_IP,
    SITE_NAME,
    SITE_PORT,
    CheckRun,
    Lab,
    Undo,
    host_changes,
    host_snapshot,
    lab_unsupported_reason,
    notary_ip,
    sweep_stale,
    terminate_as_interrupt,
)

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

INTERCEPT_PORT = 9443
TAMPER_PORT = 9080


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = lab_unsupported_reason()
    if reason:
        if os.environ.get("PARALLAX_REQUIRE_LAB") == "1":
            pytest.fail(f"PARALLAX_REQUIRE_LAB=1 but the lab cannot run: {reason}")
        pytest.skip(reason)
    sweep_stale()
    before = host_snapshot()
    the_lab = Lab(tmp_path_factory.mktemp("lab"), notaries=3)
    atexit.register(the_lab.close)  # a last resort if the interpreter exits without teardown
    with terminate_as_interrupt():
        try:
            the_lab.build()
            the_lab.start_all()
            yield the_lab
        finally:
            the_lab.close()
            atexit.unregister(the_lab.close)
    left = the_lab.leftovers()
    after = host_snapshot()
    assert not left, f"the lab left things behind: {left}"
    changed = host_changes(before, after)  # only what the lab could have made: see host_changes
    assert not changed, f"the lab changed the host namespace: {changed}"


@pytest.fixture
def undo(lab: Lab) -> Iterator[Undo]:
    u = Undo(lab)
    try:
        yield u
    finally:
        errors = u.close()
        assert not errors, f"could not undo scenario changes: {errors}"


def _site_pin(lab: Lab) -> str:
    assert lab.site is not None
    return lab.site.info["pin"]


def _assert(run: CheckRun, status: str, code: int) -> None:
    print(run.describe())  # shown with -rA / -s: the verdict each scenario produced
    assert run.verdict.get("status") == status and run.code == code, run.describe()


# -- topology ----------------------------------------------------------------------------

def test_lab_is_isolated(lab: Lab) -> None:
    """Every namespace routes only the lab's 10.77.0.0/16, has no default route and no host interface."""
    import ipaddress

    lab_net = ipaddress.ip_network(LAB_NET)
    for role in lab.roles:
        routes = lab.sh(role, "ip", "-o", "-4", "route", "show").stdout.splitlines()
        assert routes, role
        for line in routes:
            dst = line.split()[0]
            assert dst != "default", (role, line)
            assert ipaddress.ip_network(dst).subnet_of(lab_net), (role, line)  # type: ignore[arg-type]
        links = {ln.split(":")[1].strip().split("@")[0] for ln in lab.sh(role, "ip", "-o", "link").stdout.splitlines()}
        assert links <= {"lo", "up0", "to-isp", "to-client", "to-site", "to-atk", "to-n1", "to-n2", "to-n3"}, (role, links)
    # The host's own resolver (or anything outside the lab) is not reachable from the client.
    probe = lab.sh("client", "ip", "route", "get", "10.255.255.53", check=False)
    assert probe.returncode != 0 and "unreachable" in probe.stderr.lower(), probe


# -- 1. clean ------------------------------------------------------------------------------

def test_clean_path_is_consistent(lab: Lab) -> None:
    run = lab.check()
    _assert(run, "consistent", 0)
    pin = _site_pin(lab)
    assert run.verdict["client"]["pin"] == pin and run.verdict["client"]["ip"] == SITE_IP
    for i in range(1, lab.n + 1):
        r = run.by_name()[f"notary-{i}"]
        assert r["result"] == "agrees" and r["counted"] and r["pins"] == [pin] and r["ips"] == [SITE_IP], run.describe()
    # The library call, from the same namespace, agrees.
    lib = lab.verify()
    _assert(lib, "consistent", 0)
    assert lib.verdict["client"]["pin"] == pin


def test_conformance_of_every_lab_notary(lab: Lab) -> None:
    """``parallax conformance`` from the client's namespace passes against every lab notary."""
    procs = {i: lab.client_popen([lab.parallax, "conformance", f"http://{notary_ip(i)}:{NOTARY_PORT}",
                                  "--target", f"{SITE_NAME}:{SITE_PORT}", "--json"])
             for i in range(1, lab.n + 1)}
    for i, p in procs.items():
        out, err = p.communicate(timeout=60)
        doc = json.loads(out)
        assert p.returncode == 0 and doc["ok"], (i, out, err)
        checks = {c["name"]: c for c in doc["checks"]}
        assert all(c["status"] == "pass" for c in checks.values()), (i, out)
        assert "blocked_by_policy" in checks["refuse ipv4-mapped"]["detail"]
        assert " ok sha256/" in checks["observe"]["detail"], checks["observe"]


# -- 2. transparent TLS interception on the client's router ------------------------------------

def _intercept_on(undo: Undo, role: str, in_iface: str, *, cert_out: Path | None = None) -> dict[str, str]:
    extra = ["--cert-out", str(cert_out)] if cert_out else []
    proc = undo.actor(role, "intercept", "--listen", f"0.0.0.0:{INTERCEPT_PORT}", "--upstream", f"{SITE_IP}:{SITE_PORT}",
                      "--sni", SITE_NAME, "--org", f"Interceptor CA ({role})", *extra, name=f"intercept-{role}")
    undo.iptables(role, "nat", "PREROUTING", "-i", in_iface, "-p", "tcp", "-d", SITE_IP, "--dport", str(SITE_PORT),
                  "-j", "REDIRECT", "--to-ports", str(INTERCEPT_PORT))
    return proc.info


def test_interception_on_clients_router_is_mitm(lab: Lab, undo: Undo) -> None:
    forged = _intercept_on(undo, "isp", "to-client")
    run = lab.check()
    _assert(run, "mitm_suspected", 1)
    assert run.verdict["client"]["pin"] == forged["pin"] != _site_pin(lab)
    for r in run.by_name().values():
        assert r["result"] == "disagrees" and r["pins"] == [_site_pin(lab)], run.describe()
    assert lab.rule_packets("isp", "nat", "PREROUTING") > 0, "the REDIRECT rule never matched"


# -- 3. route hijack: the router answers for the target's address ----------------------------

def test_route_hijack_is_mitm(lab: Lab, undo: Undo) -> None:
    # The router claims the target's address (on its loopback) and answers with its own TLS server.
    undo.run("isp", ["ip", "addr", "add", f"{SITE_IP}/32", "dev", "lo"], ["ip", "addr", "del", f"{SITE_IP}/32", "dev", "lo"])
    fake = undo.actor("isp", "site", "--listen", f"{SITE_IP}:{SITE_PORT}", "--name", SITE_NAME,
                      "--org", "Hijacker CA", name="hijack-site")
    run = lab.check()
    _assert(run, "mitm_suspected", 1)
    assert run.verdict["client"]["pin"] == fake.info["pin"] and run.verdict["client"]["ip"] == SITE_IP
    assert all(r["pins"] == [_site_pin(lab)] for r in run.by_name().values()), run.describe()


# -- 4. interception on one notary's path only ---------------------------------------------------

def test_interception_on_one_notary_path_is_an_outlier(lab: Lab, undo: Undo) -> None:
    forged = _intercept_on(undo, "core", "to-n3")
    run = lab.check()
    _assert(run, "consistent_with_outliers", 0)
    assert run.verdict["outliers"] == ["notary-3"], run.describe()
    assert "notary-3" in run.verdict["summary"]
    results = run.by_name()
    assert results["notary-3"]["result"] == "disagrees" and results["notary-3"]["pins"] == [forged["pin"]]
    assert results["notary-1"]["result"] == results["notary-2"]["result"] == "agrees"
    assert run.verdict["client"]["pin"] == _site_pin(lab)


# -- 5. DNS spoofing in the client's location ---------------------------------------------------

def test_dns_spoofing_is_mitm(lab: Lab, undo: Undo) -> None:
    spoofer = undo.actor("attacker", "site", "--listen", f"{ATTACKER_IP}:{SITE_PORT}", "--name", SITE_NAME,
                         "--org", "DNS spoofer CA", name="spoof-site")
    undo.hosts("client", {**Lab.default_hosts(), SITE_NAME: [ATTACKER_IP]})
    run = lab.check()
    _assert(run, "mitm_suspected", 1)
    assert run.verdict["client"]["ip"] == ATTACKER_IP and run.verdict["client"]["pin"] == spoofer.info["pin"]
    assert all(r["ips"] == [SITE_IP] for r in run.by_name().values()), run.describe()


# -- 6. a CDN: two addresses, two legitimate keys -----------------------------------------------------

def test_cdn_with_two_keys_is_not_mitm(lab: Lab, undo: Undo) -> None:
    pins = []
    for n, ip in enumerate(CDN_IPS):
        undo.run("site", ["ip", "addr", "add", f"{ip}/24", "dev", "up0"], ["ip", "addr", "del", f"{ip}/24", "dev", "up0"])
        edge = undo.actor("site", "site", "--listen", f"{ip}:{SITE_PORT}", "--name", CDN_NAME,
                          "--org", f"CDN edge CA {n}", name=f"cdn-{n}")
        pins.append(edge.info["pin"])
    assert pins[0] != pins[1]
    target = f"{CDN_NAME}:{SITE_PORT}"
    seen = []
    for order in (list(CDN_IPS), list(reversed(CDN_IPS))):
        undo.hosts("client", {**Lab.default_hosts(), CDN_NAME: order})
        run = lab.check(target=target)
        _assert(run, "consistent", 0)
        assert run.verdict["status"] != "mitm_suspected"
        seen.append(run.verdict["client"]["pin"])
        for r in run.by_name().values():
            assert sorted(r["pins"]) == sorted(pins) and sorted(r["ips"]) == sorted(CDN_IPS), run.describe()
    assert seen == pins, "the client should have seen each edge's key in turn"
    lib = lab.verify(target=target)
    _assert(lib, "consistent", 0)


# -- 7. a notary down, another cut off mid-check ------------------------------------------------------

def test_notary_down_and_one_cut_off_mid_check(lab: Lab, undo: Undo) -> None:
    timeout = 3.0
    undo.notary_down(1)
    run = lab.check(timeout=timeout, wait_all=False)
    _assert(run, "consistent", 0)  # 2 of 3 in 2 regions still meet mpic's n-1
    assert run.by_name()["notary-1"]["result"] == "unreachable"

    # Stall notary-2's probe of the site, so that its answer is still pending, then cut its link.
    undo.iptables("core", "filter", "FORWARD", "-i", "to-n2", "-d", SITE_IP, "-j", "DROP", insert=True)
    start = time.monotonic()
    proc = lab.client_popen([lab.parallax, "check", f"{SITE_NAME}:{SITE_PORT}", "--bundle", str(lab.bundle_path),
                             "--json", "--timeout", f"{timeout:g}"])
    try:
        while not lab.sh("n2", "ss", "-Htn", "state", "syn-sent", "dst", SITE_IP).stdout.strip():
            assert proc.poll() is None and time.monotonic() - start < 10, "notary-2 never started its probe"
            time.sleep(0.02)
        cut_at = time.monotonic() - start
        undo.iptables("core", "filter", "FORWARD", "-i", "to-n2", "-j", "DROP", insert=True)
        undo.iptables("core", "filter", "FORWARD", "-o", "to-n2", "-j", "DROP", insert=True)
        out, err = proc.communicate(timeout=timeout + 10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    elapsed = time.monotonic() - start
    print(f"notary-2 cut off {cut_at:.2f}s after the check started")
    cut = CheckRun(proc.returncode, json.loads(out or "{}"), elapsed, out, err)
    _assert(cut, "insufficient", 2)
    results = cut.by_name()
    assert results["notary-1"]["result"] == "unreachable"
    assert results["notary-2"]["result"] == "unreachable" and "no answer within" in results["notary-2"]["reason"], cut.describe()
    assert results["notary-3"]["result"] == "agrees"
    # The client waited for notary-2 until its timeout, and no longer (plus interpreter start-up):
    # the verdict does not depend on the cut-off notary ever answering.
    assert timeout <= elapsed < timeout + 5.0, f"verdict after {elapsed:.1f}s (cut at {cut_at:.1f}s)"


# -- 8. notary traffic intercepted and altered on the client's router ------------------------------------

def test_tampered_notary_answers_are_rejected(lab: Lab, undo: Undo) -> None:
    forged_der = lab.workdir / "forged.der"
    forged = _intercept_on(undo, "isp", "to-client", cert_out=forged_der)
    tamper = undo.actor("isp", "httptamper", "--listen", f"0.0.0.0:{TAMPER_PORT}", "--swap-chain", str(forged_der),
                        "--flip", notary_ip(1), name="httptamper")
    undo.iptables("isp", "nat", "PREROUTING", "-i", "to-client", "-p", "tcp", "--dport", str(NOTARY_PORT),
                  "-j", "REDIRECT", "--to-ports", str(TAMPER_PORT))
    run = lab.check()
    # Every answer was altered: none verifies, none counts, no consistent verdict.
    _assert(run, "insufficient", 2)
    assert run.verdict["client"]["pin"] == forged["pin"]
    assert run.verdict["agreeing"] == 0 and run.verdict["pin"] is None
    for r in run.by_name().values():
        assert r["result"] in ("bad_signature", "invalid") and not r["counted"], run.describe()
    log = tamper.log_text()
    assert f"from {notary_ip(1)}:{NOTARY_PORT} mode=flip" in log, log
    for i in range(2, lab.n + 1):
        assert f"from {notary_ip(i)}:{NOTARY_PORT} mode=swap" in log, log
