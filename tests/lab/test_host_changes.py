"""The lab's teardown check counts only what the lab itself could have left in the host namespace.

Pure: runs without root in the fast suite.  The snapshots are built by hand (a container engine's
bridge cannot be conjured on the host for a unit test); the lab fixture in test_lab.py applies the
same function to real snapshots taken before and after a real lab run.
"""

from __future__ import annotations

from typing import Any

from tests.lab.netlab import LAB_NET, host_changes

BEFORE: dict[str, Any] = {
    "links": ["eth0", "lo"],
    "iptables": ["*filter", ":INPUT ACCEPT", ":FORWARD ACCEPT", ":OUTPUT ACCEPT", "COMMIT"],
}

# What dockerd (default flags) adds while it runs: none of it is the lab's.
ENGINE: dict[str, Any] = {
    "links": ["docker0", "br-5f2c0a1b9e3d", "veth1a2b3c4"],
    "iptables": [":DOCKER - ", ":DOCKER-USER - ", ":DOCKER-ISOLATION-STAGE-1 - ",
                 "-A FORWARD -j DOCKER-USER", "-A FORWARD -o docker0 -j DOCKER",
                 "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE"],
}


def _plus(extra: dict[str, Any]) -> dict[str, Any]:
    return {k: BEFORE[k] + extra.get(k, []) for k in BEFORE}


def test_unrelated_interfaces_and_rules_are_not_the_labs() -> None:
    after = _plus(ENGINE)
    assert host_changes(BEFORE, after) == []
    # The check this replaces flagged exactly this situation (issue 8, item 13):
    assert not set(after["links"]) <= set(BEFORE["links"])


def test_a_lab_interface_on_the_host_is_reported() -> None:
    for name in ("to-isp", "up0", "to-n3", "to-client", "to-site", "to-atk"):
        after = _plus({"links": [*ENGINE["links"], name]})
        assert host_changes(BEFORE, after) == [f"host interface {name}"], name
    assert host_changes(BEFORE, _plus({"links": ["to-nowhere", "up01"]})) == []


def test_a_lab_iptables_rule_on_the_host_is_reported() -> None:
    net = LAB_NET.split("/")[0].rsplit(".", 2)[0]  # "10.77"
    for rule in (f"-A PREROUTING -d {net}.10.2/32 -p tcp -j DNAT --to-destination {net}.11.2:9443",
                 "-A FORWARD -i to-n2 -j DROP",
                 "-A INPUT -m comment --comment pxlab-1234-m -j ACCEPT"):
        after = _plus({"iptables": [*ENGINE["iptables"], rule]})
        assert host_changes(BEFORE, after) == [f"host iptables rule {rule}"], rule


def test_something_the_lab_made_and_removed_is_not_reported() -> None:
    assert host_changes(BEFORE, BEFORE) == []
