"""Private checks through an Oblivious HTTP relay, in the network-namespace lab.

Its own lab (same topology and helpers as :mod:`tests.lab.test_lab`, with a fourth
notary): notaries 1-3 are gateways, notary-4 runs ``parallax serve --relay
--bundle`` for the lab's bundle.  The client runs ``parallax check --relay auto``
in its namespace, with ``--observed`` (the pin its browser already holds, so the
client itself sends nothing to the site) while a packet capture runs on the
client's only link (an AF_PACKET socket in the client's namespace: every frame of
the client–relay path, both directions).

Shown: the verdict is consistent through the relay and names it; the relay's
store, logs and metrics never contain the site's name; the gateways' stores, logs
and metrics never contain the client's address; the capture on the client's link
contains the relay traffic but not the site's name, while a direct check captured
the same way does contain it (the capture can see names when they are there).
"""

from __future__ import annotations

import atexit
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.lab.netlab import (
    CLIENT_IP,
    LAB_NET,
    NOTARY_PORT,
    SITE_NAME,
    SITE_PORT,
    Lab,
    Proc,
    host_snapshot,
    lab_unsupported_reason,
    notary_ip,
    sweep_stale,
    terminate_as_interrupt,
)

pytestmark = [pytest.mark.lab, pytest.mark.timeout(180)]

RELAY = 4  # notary-4 relays; notaries 1-3 are the gateways asked

# A bounded packet capture: every frame on the client's link, appended to a file
# (each frame prefixed by its 4-byte length), until SIGTERM or 120 s.
CAPTURE = r"""
import json, signal, socket, struct, sys, time
out = open(sys.argv[1], "wb")
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.bind((sys.argv[2], 0))
s.settimeout(0.2)
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
print(json.dumps({"capturing": sys.argv[2]}), flush=True)
end = time.monotonic() + 120
while not stop and time.monotonic() < end:
    try:
        frame = s.recv(65535)
    except socket.timeout:
        continue
    out.write(struct.pack(">I", len(frame)) + frame)
    out.flush()
out.close()
"""


@pytest.fixture(scope="module")
def rlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = lab_unsupported_reason()
    if reason:
        if os.environ.get("PARALLAX_REQUIRE_LAB") == "1":
            pytest.fail(f"PARALLAX_REQUIRE_LAB=1 but the lab cannot run: {reason}")
        pytest.skip(reason)
    sweep_stale()
    before = host_snapshot()
    the_lab = Lab(tmp_path_factory.mktemp("relaylab"), notaries=RELAY)
    atexit.register(the_lab.close)
    with terminate_as_interrupt():
        try:
            the_lab.build()
            the_lab.start_all()
            _restart_as_relay(the_lab)
            yield the_lab
        finally:
            the_lab.close()
            atexit.unregister(the_lab.close)
    left = the_lab.leftovers()
    after = host_snapshot()
    assert not left, f"the lab left things behind: {left}"
    # Container engines of other jobs on a shared host add and remove their own veth/bridge
    # links at any time (names like veth93efecd, br-6c82...); any other new link is ours.
    new = {n for n in set(after["links"]) - set(before["links"]) if not re.fullmatch(r"veth[0-9a-f]{7}|br-[0-9a-f]+|docker\d*", n)}
    assert not new, f"new host interfaces: {new}"
    assert set(after["iptables"]) <= set(before["iptables"])


def _restart_as_relay(lab: Lab) -> None:
    """notary-4 again, now also relaying for the bundle; the bundle re-merged so its entry says relay."""
    lab.stop_notary(RELAY)
    data = lab.workdir / f"notary-{RELAY}"
    argv = [lab.parallax, "serve", "--data-dir", str(data), "--listen", f"{notary_ip(RELAY)}:{NOTARY_PORT}",
            "--name", f"notary-{RELAY}", "--region", f"lab-region-{RELAY}", "--allow-network", LAB_NET,
            "--allow-port", str(SITE_PORT), "--ttl", "0", "--timeout", "5",
            "--export-entry", str(data / "entry.json"), "--relay", "--bundle", str(lab.bundle_path)]
    lab.notaries[RELAY] = lab.spawn(f"n{RELAY}", argv, name=f"notary-{RELAY}-relay", listen_port=NOTARY_PORT)
    entries = [str(lab.workdir / f"notary-{i}" / "entry.json") for i in range(1, RELAY + 1)]
    subprocess.run([lab.parallax, "bundle", "merge", *entries, "-o", str(lab.bundle_path)],
                   check=True, capture_output=True, timeout=60)


def _capture(lab: Lab, name: str) -> tuple[Proc, Path]:
    path = lab.workdir / f"{name}.frames"
    proc = lab.spawn("client", [sys.executable, "-c", CAPTURE, str(path), "up0"], name=name, ready_line=True)
    return proc, path


def _metrics(lab: Lab, i: int) -> str:
    code = f"import urllib.request; print(urllib.request.urlopen('http://{notary_ip(i)}:{NOTARY_PORT}/metrics', timeout=10).read().decode())"
    return lab.sh("client", sys.executable, "-c", code).stdout


def _store_bytes(lab: Lab, i: int) -> bytes:
    """The notary's SQLite store as bytes (database, WAL and journal), plus a dump of every row."""
    data = lab.workdir / f"notary-{i}"
    raw = b"".join(p.read_bytes() for p in data.glob("observations.sqlite3*") if p.is_file())
    db = sqlite3.connect(f"file:{data / 'observations.sqlite3'}?mode=ro", uri=True)
    try:
        rows = "\n".join(str(r) for r in db.iterdump())
    finally:
        db.close()
    return raw + rows.encode()


def _logs(lab: Lab, i: int) -> str:
    out = []
    for p in lab.workdir.glob(f"notary-{i}*.log"):
        out.append(p.read_text(errors="replace"))
    for p in lab.workdir.glob(f"notary-{i}*.out"):
        out.append(p.read_text(errors="replace"))
    return "\n".join(out)


def test_check_through_a_relay_notary_hides_who_from_what(rlab: Lab) -> None:
    lab = rlab
    assert lab.site is not None
    pin = lab.site.info["pin"]
    cap, frames = _capture(lab, "capture-relayed")
    try:
        run = lab.check("--relay", "auto", "--observed", pin, timeout=10)
        time.sleep(0.5)  # let the last frames reach the capture
    finally:
        lab.stop(cap)
    print(run.describe())
    assert run.code == 0 and run.verdict["status"] == "consistent", run.describe()
    assert run.verdict["relays"] == [f"notary-{RELAY}"]
    assert sorted(run.by_name()) == ["notary-1", "notary-2", "notary-3"]  # the relay was not asked
    assert all(r["result"] == "agrees" for r in run.verdict["results"])

    # The client's link carried the relayed requests, and never the site's name.
    captured = frames.read_bytes()
    assert b"/v1/relay/" in captured and b"message/ohttp-req" in captured
    assert SITE_NAME.encode() not in captured
    assert SITE_NAME.encode("idna") not in captured

    # The relay's store, logs and metrics never name the site; its logs not the client either.
    relay_store = _store_bytes(lab, RELAY)
    assert SITE_NAME.encode() not in relay_store
    relay_logs = _logs(lab, RELAY)
    assert SITE_NAME not in relay_logs and CLIENT_IP not in relay_logs
    assert SITE_NAME not in _metrics(lab, RELAY)

    # The gateways saw the site (they probed it) but never the client's address.
    for i in range(1, RELAY):
        assert CLIENT_IP.encode() not in _store_bytes(lab, i), f"notary-{i} store"
        logs = _logs(lab, i)
        assert CLIENT_IP not in logs, f"notary-{i} logs"
        assert SITE_NAME in logs or SITE_NAME.encode() in _store_bytes(lab, i)  # it did observe the site
        assert CLIENT_IP not in _metrics(lab, i), f"notary-{i} metrics"


def test_the_capture_sees_the_name_when_asked_directly(rlab: Lab) -> None:
    """Control: the same capture during a direct check does contain the site's name.

    Runs after the relayed check (file order): it asks notary-4 directly too, so from
    here on notary-4's own logs name the site, as any directly asked notary's do.
    """
    lab = rlab
    assert lab.site is not None
    cap, frames = _capture(lab, "capture-direct")
    try:
        run = lab.check("--relay", "none", "--observed", lab.site.info["pin"], timeout=10)
        time.sleep(0.5)
    finally:
        lab.stop(cap)
    assert run.code == 0 and run.verdict["status"] == "consistent", run.describe()
    assert "relays" not in run.verdict
    assert SITE_NAME.encode() in frames.read_bytes()
