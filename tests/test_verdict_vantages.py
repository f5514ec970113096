"""The verdict engine with the evidence besides notaries: proxy vantages, expected interceptors, remembered keys.

Pure and table-driven (client.verdict.decide with a client.evidence.CheckContext): no sockets.
Expected values are written out by hand from the rules in client/evidence.py's docstring.
"""

from __future__ import annotations

import pytest

from client.evidence import CheckContext, Expectation, KeyMemory, KnownKey, ProxyView
from client.policy import get_policy
from client.verdict import ClientView, Evidence, decide
from notary.core import Observation, Target, pin_from_spki_hex

NOW = 1_700_000_000
HOST, PORT = "example.com", 443
HONEST = "a1" * 32
MITM = "b2" * 32
CORP = "e5" * 32  # a declared interceptor's CA key
NEWKEY = "f6" * 32


def _obs(spki: str) -> Observation:
    return Observation(
        notary="ed25519:" + "0" * 64, target=Target(HOST, PORT, HOST), ip="192.0.2.1", nonce="n" * 22,
        observed_at=NOW, signed_at=NOW, status="ok", detail=None, tls_version="TLSv1.3", leaf_sha256=None,
        spki_sha256=spki, chain=(), leaf=None, source="fresh", age=0, key_history=(),
    )


def notaries(*keys: str | None) -> list[Evidence]:
    """One notary per key (None: the notary failed), each in its own region."""
    out = []
    for i, k in enumerate(keys):
        kid = f"ed25519:{i:064x}"
        if k is None:
            out.append(Evidence(f"n{i}", f"r{i}", kid, failure="unreachable", reason="down"))
        else:
            out.append(Evidence(f"n{i}", f"r{i}", kid, observations=(_obs(k),)))
    return out


def proxy(i: int, key: str | None, status: str | None = None) -> ProxyView:
    if key is None:
        return ProxyView(f"socks5h://127.0.0.{i}:1080", status or "proxy_failed", detail="connection refused",
                         remote_dns=True)
    return ProxyView(f"socks5h://127.0.0.{i}:1080", "ok", key, remote_dns=True)


def verdict(client_key: str, notary_keys: tuple, proxy_keys: tuple = (), policy: str = "mpic",
            proven: tuple[str, ...] = (), expect: tuple[str, ...] = (), memory: KeyMemory | None = None,
            overrides: dict | None = None):
    pol = get_policy(policy)
    if overrides:
        pol = pol.with_overrides(**overrides)
    ctx = CheckContext(tuple(proxy(i + 1, k) for i, k in enumerate(proxy_keys)), Expectation(expect), memory)
    cv = ClientView("ok", client_key, "192.0.2.9", proven_keys=proven or (client_key,))
    return decide(cv, notaries(*notary_keys), pol, NOW, host=HOST, port=PORT, context=ctx)


# -- proxies mixed with notaries --------------------------------------------------------------------

PROXY_TABLE = [
    # (name, client key, notary keys, proxy keys, policy, overrides, expected status, counted)
    ("advisory: notaries agree, proxies agree", HONEST, (HONEST,) * 3, (HONEST, HONEST), "mpic", None, "consistent", False),
    ("advisory: notaries agree, a proxy disagrees -> outlier", HONEST, (HONEST,) * 3, (MITM,), "mpic", None,
     "consistent_with_outliers", False),
    ("advisory: notaries see another key, proxies agree with you: notaries rule", MITM, (HONEST,) * 3,
     (MITM, MITM, MITM, MITM), "mpic", None, "mitm_suspected", False),
    ("advisory: no notaries, all proxies agree -> insufficient", HONEST, (), (HONEST, HONEST), "mpic", None,
     "insufficient", False),
    ("advisory: no notaries, all proxies disagree -> insufficient", MITM, (), (HONEST, HONEST), "mpic", None,
     "insufficient", False),
    ("proxies policy: proxies alone agree -> consistent", HONEST, (), (HONEST, HONEST), "proxies", None,
     "consistent", True),
    ("proxies policy: proxies alone see another key -> mitm", MITM, (), (HONEST, HONEST), "proxies", None,
     "mitm_suspected", True),
    ("proxies policy: one proxy failed counts against -> insufficient", HONEST, (), (HONEST, None), "proxies", None,
     "insufficient", True),
    ("proxies policy: proxies split -> split_view", HONEST, (), (HONEST, MITM), "proxies", None, "split_view", True),
    ("proxies policy: no proxy, no notary -> insufficient", HONEST, (), (), "proxies", None, "insufficient", True),
    ("count: unsigned proxies never silence a signed mitm quorum", MITM, (HONEST,) * 3, (MITM,) * 6, "mpic",
     {"proxies": "count"}, "mitm_suspected", True),
    ("count: proxies may raise an alarm the notaries did not", HONEST, (HONEST, HONEST), (MITM, MITM, MITM), "mpic",
     {"proxies": "count"}, "split_view", True),
    ("count: notaries plus agreeing proxies -> consistent", HONEST, (HONEST, HONEST), (HONEST,), "mpic",
     {"proxies": "count"}, "consistent", True),
]


@pytest.mark.parametrize("name,mine,nkeys,pkeys,policy,overrides,status,counted", PROXY_TABLE,
                         ids=[row[0] for row in PROXY_TABLE])
def test_proxy_mixing_rules(name, mine, nkeys, pkeys, policy, overrides, status, counted) -> None:
    v = verdict(mine, nkeys, pkeys, policy, overrides=overrides)
    assert v.status == status, v.summary
    assert len(v.vantages) == len(pkeys)
    assert len(v.results) == len(nkeys)  # proxies never appear as notaries
    for x, k in zip(v.vantages, pkeys):
        doc = x.to_json()
        assert doc["signed"] is False and doc["kind"] == "proxy"
        if k is None:
            assert x.result == "proxy_failed" and not x.counted and "connection refused" in x.reason
        else:
            assert x.result == ("agrees" if k == mine else "disagrees")
            assert x.counted is counted
            assert x.pins == (pin_from_spki_hex(k),)


def test_advisory_outlier_names_the_proxy_and_counts_only_notaries() -> None:
    v = verdict(HONEST, (HONEST,) * 3, (MITM,))
    assert v.outliers == ("socks5h://127.0.0.1:1080",)
    assert (v.agreeing, v.asked) == (3, 3)
    assert "unsigned proxy" in v.summary and "socks5h://127.0.0.1:1080" in v.summary


def test_advisory_proxies_are_summarised_when_notaries_cannot_decide() -> None:
    v = verdict(HONEST, (), (HONEST, MITM, None))
    assert v.status == "insufficient"
    assert "not counted under policy mpic" in v.summary and "1 saw your key, 1 saw a different key, 1 failed" in v.summary


def test_counted_proxies_are_in_the_count() -> None:
    v = verdict(HONEST, (HONEST, HONEST), (HONEST,), overrides={"proxies": "count"})
    assert (v.agreeing, v.asked, v.required) == (3, 3, 2)
    assert "unsigned proxies" in v.summary


def test_proxy_that_could_not_reach_the_target_is_unreachable_not_failed() -> None:
    pv = ProxyView("socks5://10.0.0.1:1080", "refused", detail="connection refused")
    cv = ClientView("ok", HONEST, proven_keys=(HONEST,))
    v = decide(cv, notaries(HONEST, HONEST, HONEST), get_policy("mpic"), NOW, host=HOST, port=PORT,
               context=CheckContext((pv,)))
    assert v.vantages[0].result == "unreachable" and "refused" in v.vantages[0].reason
    assert v.status == "consistent"


def test_bad_proxies_mode_is_refused() -> None:
    from notary.errors import InputError

    with pytest.raises(InputError):
        get_policy("mpic").with_overrides(proxies="trust-everything")


# -- expected interception ----------------------------------------------------------------------------

INTERCEPT_TABLE = [
    # (name, client key, proven keys, notary keys, expected keys, status, matched)
    ("declared CA signed your key, notaries see another -> intercepted_as_expected", MITM, (MITM, CORP),
     (HONEST,) * 3, (CORP,), "intercepted_as_expected", True),
    ("declared leaf key -> intercepted_as_expected", MITM, (MITM,), (HONEST,) * 3, (MITM,), "intercepted_as_expected", True),
    ("an unknown interceptor stays mitm_suspected", MITM, (MITM,), (HONEST,) * 3, (CORP,), "mitm_suspected", False),
    ("declared CA present but not proven (chain padding) stays mitm", MITM, (MITM,), (HONEST,) * 3, (CORP,),
     "mitm_suspected", False),
    ("consistent stays consistent (an internal site of the declared CA)", HONEST, (HONEST, CORP), (HONEST,) * 3, (CORP,),
     "consistent", True),
    ("no quorum: status kept, the match is stated", MITM, (MITM, CORP), (HONEST, None, None), (CORP,), "insufficient", True),
    ("nothing declared: no note", MITM, (MITM, CORP), (HONEST,) * 3, (), "mitm_suspected", None),
]


@pytest.mark.parametrize("name,mine,proven,nkeys,expect,status,matched", INTERCEPT_TABLE,
                         ids=[row[0] for row in INTERCEPT_TABLE])
def test_expected_interception(name, mine, proven, nkeys, expect, status, matched) -> None:
    v = verdict(mine, nkeys, proven=proven, expect=expect)
    assert v.status == status, v.summary
    if matched is None:
        assert v.interception is None and v.to_json()["interception"] is None
        return
    assert v.interception is not None
    assert v.interception.expected == tuple(pin_from_spki_hex(k) for k in expect)
    assert (v.interception.matched is not None) is matched
    if status == "intercepted_as_expected":
        assert v.summary.startswith("intercepted as expected") and pin_from_spki_hex(expect[0]) in v.summary
    if status == "mitm_suspected":
        assert "NOT your declared interceptor" in v.summary


# -- remembered keys -------------------------------------------------------------------------------------

def known(key: str, *statuses: str, first: int = NOW - 86400 * 30) -> KnownKey:
    return KnownKey(key, first, NOW - 60, tuple((s, 1) for s in statuses))


MEMORY_TABLE = [
    # (name, client key, notary keys, memory, expected status, change, pinned)
    ("first use", HONEST, (HONEST,) * 3, KeyMemory(), "consistent", "first_use", None),
    ("known key", HONEST, (HONEST,) * 3, KeyMemory((known(HONEST, "consistent"),)), "consistent", "known", None),
    ("TOFU: a key only ever judged insufficient is vouched", HONEST, (None, None, None),
     KeyMemory((known(HONEST, "insufficient"),)), "insufficient", "known", None),
    ("new key the notaries see: rotation", NEWKEY, (NEWKEY,) * 3, KeyMemory((known(HONEST, "consistent"),)),
     "consistent", "rotation", None),
    ("new key, no quorum: key_changed alarm", NEWKEY, (None, None, None), KeyMemory((known(HONEST, "consistent"),)),
     "key_changed", "changed", None),
    ("new key, split view: key_changed alarm", NEWKEY, (NEWKEY, HONEST), KeyMemory((known(HONEST, "consistent"),)),
     "key_changed", "changed", None),
    ("new key the notaries do not see: mitm stands", MITM, (HONEST,) * 3, KeyMemory((known(HONEST, "consistent"),)),
     "mitm_suspected", "changed", None),
    ("a key seen before only in alarms is not vouched", MITM, (None, None, None),
     KeyMemory((known(MITM, "mitm_suspected"),)), "insufficient", "first_use", None),
    ("a key judged only in disputed checks is not vouched", MITM, (None, None, None),
     KeyMemory((known(HONEST, "disputed"),)), "insufficient", "first_use", None),
    ("an alarm-only key does not make a later key a change", HONEST, (HONEST,) * 3,
     KeyMemory((known(MITM, "mitm_suspected"),)), "consistent", "first_use", None),
    ("pinned key matches", HONEST, (HONEST,) * 3, KeyMemory((known(HONEST, "consistent"),), (HONEST,)),
     "consistent", "known", "match"),
    ("pinned key does not match, even if notaries agree", NEWKEY, (NEWKEY,) * 3,
     KeyMemory((known(HONEST, "consistent"),), (HONEST,)), "pin_mismatch", "rotation", "mismatch"),
    ("pinned key without history", HONEST, (HONEST,) * 3, KeyMemory((), (NEWKEY,)), "pin_mismatch", "first_use", "mismatch"),
]


@pytest.mark.parametrize("name,mine,nkeys,memory,status,change,pinned", MEMORY_TABLE, ids=[r[0] for r in MEMORY_TABLE])
def test_key_memory_rules(name, mine, nkeys, memory, status, change, pinned) -> None:
    v = verdict(mine, nkeys, memory=memory)
    assert v.status == status, v.summary
    assert v.memory is not None and v.memory.change == change and v.memory.pinned == pinned
    assert v.to_json()["memory"]["change"] == change
    if status == "key_changed":
        assert v.summary.startswith("key changed") and pin_from_spki_hex(HONEST) in v.summary


@pytest.mark.parametrize("status,disagreements,recorded", [
    ("insufficient", 0, "insufficient"), ("insufficient", 1, "disputed"), ("split_view", 2, "disputed"),
    ("consistent_with_outliers", 1, "consistent_with_outliers"), ("mitm_suspected", 3, "mitm_suspected"),
])
def test_what_the_memory_records(status, disagreements, recorded) -> None:
    from client.evidence import judgement

    assert judgement(status, disagreements) == recorded


def test_memory_of_expected_interceptor_is_information() -> None:
    v = verdict(MITM, (HONEST,) * 3, proven=(MITM, CORP), expect=(CORP,), memory=KeyMemory((known(HONEST, "consistent"),)))
    assert v.status == "intercepted_as_expected" and v.memory is not None and v.memory.change == "interceptor"


def test_pin_mismatch_explained_by_declared_interceptor_is_not_a_pin_alarm() -> None:
    mem = KeyMemory((known(HONEST, "consistent"),), (HONEST,))
    v = verdict(MITM, (HONEST,) * 3, proven=(MITM, CORP), expect=(CORP,), memory=mem)
    assert v.status == "intercepted_as_expected" and v.memory is not None and v.memory.pinned == "mismatch"


def test_unreachable_client_compares_nothing() -> None:
    cv = ClientView("refused", None, detail="connection refused")
    v = decide(cv, notaries(HONEST, HONEST), get_policy("mpic"), NOW, host=HOST, port=PORT,
               context=CheckContext(memory=KeyMemory((known(HONEST, "consistent"),), (HONEST,))))
    assert v.status == "unreachable" and v.memory is not None and v.memory.change == "none"


def test_memory_age_uses_the_now_passed_in() -> None:
    v = verdict(HONEST, (HONEST,) * 3, memory=KeyMemory((known(HONEST, "consistent", first=NOW - 3 * 86400),)))
    assert v.memory is not None and "3d ago" in v.memory.detail and v.memory.first_seen == NOW - 3 * 86400


def test_without_context_the_verdict_is_unchanged() -> None:
    cv = ClientView("ok", HONEST)
    plain = decide(cv, notaries(HONEST,) * 1 + notaries(HONEST, HONEST)[1:], get_policy("mpic"), NOW, host=HOST, port=PORT)
    doc = plain.to_json()
    assert doc["vantages"] == [] and doc["interception"] is None and doc["memory"] is None


# -- properties ------------------------------------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from client.verdict import outcome_class  # noqa: E402

KEYS = st.sampled_from([HONEST, MITM, None])


@settings(max_examples=300, deadline=None)
@given(mine=st.sampled_from([HONEST, MITM]), nkeys=st.lists(KEYS, max_size=7), pkeys=st.lists(KEYS, max_size=6),
       policy=st.sampled_from(["mpic", "consensus", "majority", "minority", "perspectives"]))
def test_advisory_proxies_never_change_the_outcome_class(mine, nkeys, pkeys, policy) -> None:
    without = verdict(mine, tuple(nkeys), (), policy)
    with_proxies = verdict(mine, tuple(nkeys), tuple(pkeys), policy)
    assert outcome_class(with_proxies.status) == outcome_class(without.status)
    assert (with_proxies.agreeing, with_proxies.asked) == (without.agreeing, without.asked)


@settings(max_examples=300, deadline=None)
@given(mine=st.sampled_from([HONEST, MITM]), nkeys=st.lists(KEYS, max_size=7), pkeys=st.lists(KEYS, max_size=8),
       policy=st.sampled_from(["mpic", "consensus", "majority", "minority", "perspectives", "proxies"]))
def test_counted_proxies_never_silence_a_signed_mitm_verdict(mine, nkeys, pkeys, policy) -> None:
    over = {"proxies": "count"}
    without = verdict(mine, tuple(nkeys), (), policy, overrides=over)
    with_proxies = verdict(mine, tuple(nkeys), tuple(pkeys), policy, overrides=over)
    if without.status == "mitm_suspected":
        assert with_proxies.status == "mitm_suspected", with_proxies.summary
