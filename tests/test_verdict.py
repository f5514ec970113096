"""The pure verdict engine (client.verdict.decide / conclude): no I/O, observations built directly.

Every status, every preset at its boundary counts, the region-span rule, "could not
observe" never counted as disagreeing, failures counting against the quorum, duplicate
notary keys, CDN-style multi-key sites, Perspectives weak consistency and quorum duration,
and a Hypothesis property: f lying or failing notaries out of n >= 2f+1 never flip the
default policy's verdict to the wrong side.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.policy import PRESETS, Policy, get_policy
from client.verdict import ACCEPTING, ClientView, Evidence, conclude, decide, judge_all, outcome_class
from notary.core import KeySighting, Observation, Target, pin_from_spki_hex
from notary.errors import InputError

NOW = 1_700_000_000
HOST, PORT = "example.com", 443
HONEST = "a1" * 32  # the site's real key (SPKI SHA-256 hex)
MITM = "b2" * 32  # an interceptor's key
OTHER = "c3" * 32
THIRD = "d4" * 32
FAILURES = ("unreachable", "bad_signature", "invalid", "stale", "excluded", "not_waited")


def kid(i: int) -> str:
    return f"ed25519:{i:064x}"


def obs(spki: str | None, *, ip: str = "192.0.2.1", status: str = "ok", history: tuple[KeySighting, ...] = (),
        observed_at: int = NOW) -> Observation:
    ok = status == "ok"
    return Observation(
        notary="ed25519:" + "0" * 64, target=Target(HOST, PORT, HOST), ip=ip, nonce="n" * 22,
        observed_at=observed_at, signed_at=NOW, status=status, detail=None if ok else "probe failed",
        tls_version="TLSv1.3" if ok else None, leaf_sha256=None, spki_sha256=spki if ok else None,
        chain=(), leaf=None, source="fresh", age=NOW - observed_at, key_history=history,
    )


#: The default region of notary ``i`` in these helpers: its own region ``r{i}``, so that tests not
#: about the region-span rule are not decided by it.  Pass ``region=None`` for "no region".
DISTINCT = "distinct"


def reg(i: int, region: str | None) -> str | None:
    return f"r{i}" if region == DISTINCT else region


def saw(i: int, *keys: str, region: str | None = DISTINCT, history: tuple[KeySighting, ...] = ()) -> Evidence:
    """Notary ``i`` observed the target and saw ``keys`` (one address each)."""
    return Evidence(f"n{i}", reg(i, region), kid(i), f"http://127.0.0.1:{9000 + i}",
                    observations=tuple(obs(k, ip=f"192.0.2.{j + 1}", history=history) for j, k in enumerate(keys)))


def blind(i: int, region: str | None = DISTINCT, status: str = "timeout") -> Evidence:
    """Notary ``i`` answered validly but could not observe the target."""
    return Evidence(f"n{i}", reg(i, region), kid(i), observations=(obs(None, status=status),))


def failed(i: int, kind: str = "unreachable", region: str | None = DISTINCT) -> Evidence:
    return Evidence(f"n{i}", reg(i, region), kid(i), failure=kind, reason=f"{kind} (test)")


def client(key: str = HONEST) -> ClientView:
    return ClientView("ok", key, "192.0.2.1")


def run(evidence: list[Evidence], policy: Policy | str = "mpic", cview: ClientView | None = None, now: int = NOW):
    return decide(cview or client(), evidence, get_policy(policy), now, host=HOST, port=PORT)


def build(n: int, agree: int, disagree: int, policy: str = "mpic", regions: list[str | None] | None = None,
          fail_kind: str = "unreachable") -> list[Evidence]:
    """n notaries: ``agree`` see the client's key, ``disagree`` see another, the rest fail."""
    regions = regions or [DISTINCT] * n
    out: list[Evidence] = []
    for i in range(n):
        if i < agree:
            out.append(saw(i, HONEST, region=regions[i]))
        elif i < agree + disagree:
            out.append(saw(i, OTHER, region=regions[i]))
        else:
            out.append(failed(i, fail_kind, region=regions[i]))
    return out


# -- every status ---------------------------------------------------------------------------------

def test_consistent() -> None:
    v = run(build(3, 3, 0, regions=["eu", "us", "ap"]))
    assert v.status == "consistent" and v.ok
    assert (v.agreeing, v.asked, v.required, v.count) == (3, 3, 2, "3/3")
    assert v.regions_agreeing == ("ap", "eu", "us")
    assert v.outliers == () and v.quorum_pins == (pin_from_spki_hex(HONEST),)  # the key the quorum agreed on
    assert v.pin == pin_from_spki_hex(HONEST)
    assert [r.result for r in v.results] == ["agrees"] * 3 and all(r.counted for r in v.results)
    assert v.to_json()["status"] == "consistent" and v.to_json()["pin"] == v.pin


def test_consistent_with_outliers_names_the_outliers() -> None:
    ev = build(5, 4, 1, regions=["eu", "us", "ap", "sa", "af"])
    v = run(ev)
    assert v.status == "consistent_with_outliers" and v.ok
    assert v.outliers == ("n4",)
    assert "n4 (af)" in v.summary
    assert v.agreeing == 4 and v.required == 4
    assert v.to_json()["outliers"] == ["n4"]


def test_mitm_suspected_carries_the_quorum_pins() -> None:
    ev = [saw(0, HONEST, region="eu"), saw(1, HONEST, OTHER, region="us"), saw(2, HONEST, region="ap")]
    v = run(ev, cview=client(MITM))
    assert v.status == "mitm_suspected" and not v.ok
    assert v.quorum_pins == tuple(sorted({pin_from_spki_hex(HONEST), pin_from_spki_hex(OTHER)}))
    assert v.pin is None and v.outliers == ()
    assert v.agreeing == 0
    assert pin_from_spki_hex(MITM) in v.summary and pin_from_spki_hex(HONEST) in v.summary


def test_split_view() -> None:
    v = run(build(4, 2, 2))  # mpic n=4 needs 3: neither side has it
    assert v.status == "split_view"
    assert v.pin is None and v.outliers == ()


def test_insufficient() -> None:
    v = run(build(4, 2, 0))
    assert v.status == "insufficient"
    assert (v.agreeing, v.asked, v.required) == (2, 4, 3)


@pytest.mark.parametrize("status", ["refused", "timeout", "tls_failed", "dns_failed"])
def test_unreachable_when_the_client_could_not_observe(status: str) -> None:
    cv = ClientView(status, None, None, "could not connect")
    v = run(build(3, 3, 0), cview=cv)
    assert v.status == "unreachable" and v.pin is None
    assert status in v.summary


def test_client_ok_without_a_key_is_unreachable() -> None:
    assert run(build(3, 3, 0), cview=ClientView("ok", None)).status == "unreachable"


def test_outcome_class() -> None:
    assert {outcome_class(s) for s in ("consistent", "consistent_with_outliers")} == {"accept"}
    assert outcome_class("mitm_suspected") == "mitm"
    assert {outcome_class(s) for s in ("split_view", "insufficient", "unreachable")} == {"other"}


# -- presets at their boundaries ------------------------------------------------------------------

def need_for(preset: str, n: int) -> int:
    return {
        "mpic": n - 1 if n <= 5 else n - 2,
        "consensus": n,
        "majority": n // 2 + 1,
        "minority": 1,
        "perspectives": math.ceil(0.75 * n),
    }[preset]


MPIC_TABLE = [(2, 1), (3, 2), (4, 3), (5, 4), (6, 4), (7, 5), (8, 6)]


@pytest.mark.parametrize(("n", "need"), MPIC_TABLE)
def test_mpic_required_table(n: int, need: int) -> None:
    assert PRESETS["mpic"].required(n) == need


@pytest.mark.parametrize(("n", "need"), MPIC_TABLE[1:])
def test_mpic_exactly_at_and_one_below_the_boundary(n: int, need: int) -> None:
    at = run(build(n, need, 0))
    assert at.status == "consistent" and at.agreeing == need and at.required == need
    below = run(build(n, need - 1, 0))
    assert below.status == "insufficient" and below.agreeing == need - 1
    # The same counts with the rest disagreeing instead of failing.
    at_d = run(build(n, need, n - need))
    assert at_d.status == "consistent_with_outliers"
    below_d = run(build(n, need - 1, n - need + 1))
    if n - need + 1 >= need:  # n=3: two disagreeing notaries are a quorum for a different key
        assert below_d.status == "mitm_suspected"
    else:
        assert below_d.status == "split_view"


def test_mpic_with_two_notaries_needs_both_in_two_regions() -> None:
    # n=2 needs 1 by count, but one notary is one region and mpic needs 2: both must agree.
    for ev in (build(2, 1, 0), build(2, 1, 1)):
        v = run(ev)
        assert v.status == "insufficient" and v.required == 1
        assert "span 1 region, policy mpic needs 2" in v.summary
    assert run(build(2, 2, 0)).status == "consistent"
    assert run(build(2, 0, 2), cview=client(HONEST)).status == "mitm_suspected"


@pytest.mark.parametrize("n", [0, 1])
def test_mpic_needs_at_least_two_notaries(n: int) -> None:
    v = run(build(n, n, 0))
    assert v.status == "insufficient" and "at least 2" in v.summary


@pytest.mark.parametrize("preset", ["consensus", "majority", "minority", "perspectives"])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 8])
def test_presets_exactly_at_and_one_below(preset: str, n: int) -> None:
    need = need_for(preset, n)
    assert PRESETS[preset].required(n) == need
    at = run(build(n, need, 0), preset)
    assert at.status == "consistent" and at.required == need
    below = run(build(n, need - 1, 0), preset)
    assert below.status == "insufficient"
    assert below.agreeing == need - 1 and below.asked == n


def test_consensus_one_outlier_blocks() -> None:
    v = run(build(4, 3, 1), "consensus")
    assert v.status == "split_view"


def test_majority_boundary_with_disagreement() -> None:
    assert run(build(5, 3, 2), "majority").status == "consistent_with_outliers"
    assert run(build(5, 2, 3), "majority").status == "mitm_suspected"
    assert run(build(4, 2, 2), "majority").status == "split_view"


def test_minority_one_agreement_accepts_and_one_disagreement_is_a_quorum() -> None:
    assert run(build(4, 1, 3), "minority").status == "consistent_with_outliers"
    v = run(build(4, 0, 1), "minority")
    assert v.status == "mitm_suspected"
    assert run(build(4, 0, 0), "minority").status == "insufficient"


def test_unknown_policy_and_bad_overrides_are_refused() -> None:
    with pytest.raises(InputError):
        get_policy("bogus")
    with pytest.raises(InputError):
        PRESETS["mpic"].with_overrides(rule="most")
    with pytest.raises(InputError):
        PRESETS["mpic"].with_overrides(quorum_fraction=0)
    with pytest.raises(InputError):
        PRESETS["mpic"].with_overrides(quorum_fraction=1.5)
    with pytest.raises(InputError):
        PRESETS["mpic"].with_overrides(max_age=-1)


# -- the region-span rule -------------------------------------------------------------------------

def test_agreeing_notaries_in_one_region_are_not_enough_when_two_regions_exist() -> None:
    # mpic n=3 needs 2; the two agreeing notaries share "eu" while "us" exists (and failed).
    v = run(build(3, 2, 0, regions=["eu", "eu", "us"]))
    assert v.status not in ACCEPTING
    # A + D = 2 >= 2, but no region-spanning quorum, and nobody saw another key: not split.
    assert v.status == "insufficient" and "region" in v.summary
    # The same counts across two regions are accepted.
    assert run(build(3, 2, 0, regions=["eu", "us", "us"])).status == "consistent"


def test_region_rule_holds_when_the_other_region_disagrees() -> None:
    v = run(build(5, 4, 1, regions=["eu", "eu", "eu", "eu", "us"]))
    assert v.status not in ACCEPTING
    # 4/5 is a quorum by count; it fails only the region rule, and the summary says so.
    assert v.status == "insufficient"
    assert "4/5 notaries saw your key" in v.summary and "span 1 region, policy mpic needs 2" in v.summary


def test_one_region_disagreeing_quorum_is_insufficient_not_mitm() -> None:
    v = run(build(3, 0, 2, regions=["eu", "eu", "us"]))
    assert v.status == "insufficient" and "span 1 region" in v.summary


# Regions a policy cannot see are no regions: the rule is never waived (issue 8, item 11).
NO_REGION = [None, "", "unknown", "UNKNOWN", "  "]


@pytest.mark.parametrize(("regions", "status", "spans"), [
    ([None, None, None], "insufficient", 0),
    (["unknown", "", "unknown"], "insufficient", 0),
    (["eu", "eu", "eu"], "insufficient", 1),           # a single-region bundle cannot meet mpic
    ([None, None, "us"], "insufficient", 0),           # the two agreeing have no region
    (["eu", "unknown", "us"], "insufficient", 1),      # one known region among the agreeing
    (["eu", "Unknown", "us"], "insufficient", 1),
    (["eu", "us", None], "consistent", 2),
    (["eu", "us", "eu"], "consistent", 2),
])
def test_two_of_three_agree_region_table(regions: list[str | None], status: str, spans: int) -> None:
    v = run(build(3, 2, 0, regions=regions))
    assert v.status == status
    assert len(v.regions_agreeing) == spans
    if status == "insufficient":
        assert f"span {spans} region{'s' if spans != 1 else ''}, policy mpic needs 2" in v.summary


@pytest.mark.parametrize("region", NO_REGION)
def test_issue_8_two_unknown_notaries_one_lying_is_not_accepted(region: str | None) -> None:
    # The reproduced attack: two notaries of region "unknown", one saw the interceptor's key
    # (the client's), one honest.  It used to give consistent_with_outliers (exit 0).
    ev = [saw(0, MITM, region=region), saw(1, HONEST, region=region)]
    v = run(ev, cview=client(MITM))
    assert v.status == "insufficient" and not v.ok
    assert "1/2 notaries saw your key" in v.summary and "span 0 regions, policy mpic needs 2" in v.summary


@pytest.mark.parametrize("region", NO_REGION)
def test_issue_8_two_colluding_unknown_notaries_of_three_are_not_enough(region: str | None) -> None:
    ev = [saw(0, MITM, region=region), saw(1, MITM, region=region), saw(2, HONEST, region="eu")]
    v = run(ev, cview=client(MITM))
    assert v.status == "insufficient" and not v.ok


@pytest.mark.parametrize("preset", ["consensus", "majority", "minority", "perspectives"])
def test_presets_without_a_region_requirement_accept_without_regions(preset: str) -> None:
    # min_regions 1 is no requirement: these presets never asked for regions.
    assert PRESETS[preset].min_regions == 1
    assert run(build(4, 4, 0, regions=[None, "unknown", "", None]), preset).status == "consistent"


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_with_min_regions_raised_refuses_one_region(preset: str) -> None:
    pol = PRESETS[preset].with_overrides(min_regions=2)
    v = run(build(4, 4, 0, regions=["eu", "eu", "unknown", None]), pol)
    assert v.status == "insufficient" and "span 1 region" in v.summary
    assert run(build(4, 4, 0, regions=["eu", "us", "unknown", None]), pol).status == "consistent"
    pol3 = PRESETS[preset].with_overrides(min_regions=3)
    assert run(build(4, 4, 0, regions=["eu", "us", "us", None]), pol3).status == "insufficient"


def test_mitm_needs_the_region_span_too() -> None:
    cv = client(MITM)
    v = run(build(3, 0, 2, regions=[None, None, None]), cview=cv)
    assert v.status == "insufficient" and "saw a different key" in v.summary
    ev = [saw(0, HONEST, region="eu"), saw(1, HONEST, region="eu"), failed(2, region="us")]
    assert run(ev, cview=cv).status == "insufficient"
    ev = [saw(0, HONEST, region="eu"), saw(1, HONEST, region="us"), failed(2, region="us")]
    assert run(ev, cview=cv).status == "mitm_suspected"


# -- could not observe, failures, silencing -------------------------------------------------------

@pytest.mark.parametrize("status", ["timeout", "refused", "reset", "dns_failed", "tls_failed", "blocked_by_policy"])
def test_could_not_observe_is_never_disagreement(status: str) -> None:
    ev = [saw(0, HONEST), saw(1, HONEST), blind(2, status=status)]
    v = run(ev)
    assert v.status == "consistent"  # not "with outliers"
    assert v.outliers == ()
    r = v.results[2]
    assert r.result == "unreachable" and not r.counted and status in r.reason
    # And for an intercepted client, blind notaries do not make up a mitm quorum.
    ev = [saw(0, HONEST), blind(1, status=status), blind(2, status=status)]
    v = run(ev, cview=client(MITM))
    assert v.status == "insufficient"


def test_one_address_blind_one_address_seen_still_agrees() -> None:
    ev = Evidence("n0", None, kid(0), observations=(obs(None, status="timeout", ip="192.0.2.9"), obs(HONEST)))
    r = judge_all(client(), [ev], PRESETS["mpic"], NOW)[0]
    assert r.result == "agrees" and r.counted
    assert r.ips == ("192.0.2.1", "192.0.2.9")


def test_evidence_without_observations_is_unreachable() -> None:
    ev = Evidence("n0", None, kid(0), observations=())
    r = judge_all(client(), [ev], PRESETS["mpic"], NOW)[0]
    assert r.result == "unreachable" and not r.counted


@pytest.mark.parametrize("kind", FAILURES)
def test_failures_count_against_the_quorum(kind: str) -> None:
    # 3 of 5 agree, 2 failed: mpic needs 4 of the 5 *asked*.
    v = run(build(5, 3, 0, fail_kind=kind))
    assert v.status == "insufficient"
    assert (v.agreeing, v.asked, v.required) == (3, 5, 4)
    assert [r.result for r in v.results[3:]] == [kind, kind]
    assert not any(r.counted for r in v.results[3:])
    # The reason travels into the result.
    assert v.results[3].reason == f"{kind} (test)"


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("n", [3, 5, 8])
def test_silencing_notaries_never_gives_consistent(preset: str, n: int) -> None:
    """An attacker who can only drop answers can lower A, never raise it."""
    for agree in range(n + 1):
        full = run(build(n, agree, 0), preset)
        for silenced in range(1, agree + 1):
            v = run(build(n, agree - silenced, 0), preset)
            assert v.asked == n
            if not full.ok:
                assert not v.ok
            if v.ok:
                assert v.agreeing >= need_for(preset, n)


def test_duplicate_notary_key_is_excluded_and_not_double_counted() -> None:
    ev = [saw(0, HONEST), saw(0, HONEST), failed(2)]
    v = run(ev)
    assert [r.result for r in v.results] == ["agrees", "excluded", "unreachable"]
    assert v.results[1].reason == "duplicate notary key"
    assert v.agreeing == 1 and v.asked == 3
    assert v.status == "insufficient"  # counted twice it would be 2/3: consistent
    # The same for a duplicated disagreement.
    v = run([saw(0, OTHER), saw(0, OTHER), saw(2, HONEST)], cview=client(HONEST))
    assert v.status != "mitm_suspected"
    assert sum(r.result == "disagrees" for r in v.results) == 1


# -- CDN: several keys over several addresses -----------------------------------------------------

def test_cdn_notary_that_saw_the_client_key_among_several_agrees() -> None:
    ev = [saw(i, OTHER, HONEST, THIRD) for i in range(3)]
    v = run(ev)
    assert v.status == "consistent"
    r = v.results[0]
    assert r.result == "agrees" and r.counted
    assert set(r.pins) == {pin_from_spki_hex(k) for k in (OTHER, HONEST, THIRD)}
    assert r.ips == ("192.0.2.1", "192.0.2.2", "192.0.2.3")


def test_a_key_no_notary_ever_saw_is_mitm_suspected() -> None:
    ev = [saw(i, HONEST, OTHER, THIRD) for i in range(4)]
    v = run(ev, cview=client(MITM))
    assert v.status == "mitm_suspected"
    assert v.quorum_pins == tuple(sorted(pin_from_spki_hex(k) for k in (HONEST, OTHER, THIRD)))
    for preset in PRESETS:
        assert not run(ev, preset, cview=client(MITM)).ok


# -- Perspectives: weak consistency and quorum duration -------------------------------------------

def hist(key: str, first: int, last: int) -> tuple[KeySighting, ...]:
    return (KeySighting(key, first, last),)


def test_weak_consistency_accepts_a_recent_key_from_history() -> None:
    day = 86400
    h = hist(HONEST, NOW - 20 * day, NOW - day) + hist(OTHER, NOW - day, NOW)
    ev = [saw(i, OTHER, history=h) for i in range(4)]
    v = run(ev, "perspectives")
    assert v.status == "consistent"
    assert "weak consistency" in v.results[0].reason
    # The default policy has no weak consistency: the same answers disagree.
    assert run(ev, "mpic").status == "mitm_suspected"


def test_weak_consistency_ignores_history_older_than_the_window() -> None:
    pol = PRESETS["perspectives"]
    h = hist(HONEST, NOW - pol.history_window - 100, NOW - pol.history_window - 1)
    ev = [saw(i, OTHER, history=h) for i in range(4)]
    v = run(ev, pol)
    assert v.status == "mitm_suspected"
    assert all(r.result == "disagrees" for r in v.results)
    # Exactly at the window edge it still counts.
    h = hist(HONEST, NOW - pol.history_window - 100, NOW - pol.history_window)
    assert run([saw(i, OTHER, history=h) for i in range(4)], pol).status == "consistent"


def test_quorum_duration_does_not_count_a_too_young_key() -> None:
    pol = PRESETS["perspectives"].with_overrides(quorum_duration=3600)
    young = [saw(i, HONEST, history=hist(HONEST, NOW - 100, NOW)) for i in range(4)]
    v = run(young, pol)
    assert v.status == "insufficient" and v.agreeing == 0
    assert all(r.result == "agrees" and not r.counted for r in v.results)
    assert "quorum duration" in v.results[0].reason
    old = [saw(i, HONEST, history=hist(HONEST, NOW - 3600, NOW)) for i in range(4)]
    assert run(old, pol).status == "consistent"
    # 3 old + 1 young: 3 = ceil(0.75 * 4) is still enough; 2 old + 2 young is not.
    assert run(old[:3] + young[3:], pol).status == "consistent"
    v = run(old[:2] + young[2:], pol)
    assert v.status == "insufficient" and v.agreeing == 2


def test_quorum_duration_without_any_history_does_not_count() -> None:
    pol = PRESETS["perspectives"].with_overrides(quorum_duration=60)
    assert run([saw(i, HONEST) for i in range(4)], pol).status == "insufficient"


# -- conclude() on results as the fan-out would build them ----------------------------------------

def test_conclude_matches_decide_and_keeps_complete_flag() -> None:
    ev = build(5, 4, 1)
    pol = PRESETS["mpic"]
    a = decide(client(), ev, pol, NOW, host=HOST, port=PORT, complete=False)
    b = conclude(client(), judge_all(client(), ev, pol, NOW), pol, NOW, host=HOST, port=PORT, complete=False)
    assert a == b and a.complete is False and a.checked_at == NOW


def test_ipv6_target_is_bracketed_in_the_summary() -> None:
    v = decide(client(), build(3, 3, 0), PRESETS["mpic"], NOW, host="2001:db8::1", port=8443)
    assert "[2001:db8::1]:8443" in v.summary


# -- Hypothesis: f liars out of n >= 2f+1 never flip the verdict ----------------------------------

#: How many of n perspectives may fail to corroborate under CA/B Forum Ballot SC-067 (the
#: "allowed non-corroborations" table of BR 3.2.2.9), written out here rather than taken from
#: ``Policy.required``, so that an off-by-one there fails the tests below (issue 8, item 17).
MPIC_ALLOWED_FAILURES = {2: 1, 3: 1, 4: 1, 5: 1, 6: 2, 7: 2, 8: 2, 9: 2}


def tolerance(n: int) -> int:
    """How many notaries mpic lets disagree or fail and still reach a quorum (independent table)."""
    return MPIC_ALLOWED_FAILURES[n]


def mpic_needs(n: int) -> int:
    return n - tolerance(n)


@st.composite
def scenarios(draw):
    n = draw(st.integers(3, 9))
    f = draw(st.integers(0, (n - 1) // 2))
    liars = draw(st.lists(st.integers(0, n - 1), min_size=f, max_size=f, unique=True))
    # What each liar does: fail (any failure kind), report the attacker's key, or an arbitrary other key.
    acts = draw(st.lists(st.sampled_from(["fail", "attacker_key", "random_key", "blind"]), min_size=f, max_size=f))
    randoms = draw(st.lists(st.binary(min_size=32, max_size=32).map(bytes.hex), min_size=f, max_size=f))
    kinds = draw(st.lists(st.sampled_from(FAILURES[:-1]), min_size=f, max_size=f))
    with_regions = draw(st.booleans())
    regions = draw(st.lists(st.sampled_from(["eu", "us", "ap"]), min_size=n, max_size=n)) if with_regions else [None] * n
    intercepted = draw(st.booleans())
    return n, dict(zip(liars, zip(acts, randoms, kinds))), regions, intercepted


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_f_liars_never_flip_the_default_verdict(sc) -> None:
    n, liars, regions, intercepted = sc
    f = len(liars)
    client_key = MITM if intercepted else HONEST
    ev: list[Evidence] = []
    for i in range(n):
        if i not in liars:
            ev.append(saw(i, HONEST, region=regions[i]))
            continue
        act, rnd, kind = liars[i]
        if act == "fail":
            ev.append(failed(i, kind, region=regions[i]))
        elif act == "blind":
            ev.append(blind(i, region=regions[i]))
        elif act == "attacker_key":
            # A liar colluding with the interceptor reports the client's key if intercepted,
            # and the attacker's key (a different one) if not.
            ev.append(saw(i, MITM, region=regions[i]))
        else:
            key = rnd if rnd not in (HONEST, client_key) else THIRD
            ev.append(saw(i, key, region=regions[i]))
    v = decide(ClientView("ok", client_key), ev, PRESETS["mpic"], NOW, host=HOST, port=PORT)
    assert v.asked == n

    honest_regions = {regions[i] for i in range(n) if i not in liars} - {None}
    honest_span_ok = len(honest_regions) >= 2  # mpic: 2 known regions, never waived
    within = f <= tolerance(n)  # n - f reach the quorum
    assert v.required == mpic_needs(n)

    if not intercepted:
        # The client sees the honest key: never mitm_suspected.
        assert v.status != "mitm_suspected"
        if within and honest_span_ok:
            assert v.status in ACCEPTING
            assert set(v.outliers) == {f"n{i}" for i, (a, _, _) in liars.items() if a in ("attacker_key", "random_key")}
        elif within:
            # A quorum by count whose notaries span fewer than 2 known regions: insufficient, saying why.
            assert v.status == "insufficient" and "policy mpic needs 2" in v.summary
        else:
            # f >= 2 with n <= 5, or f >= 3: the honest side falls short of the quorum (the
            # liars never agree with the honest key), and the verdict says so: split_view when
            # enough answered and some saw another key, insufficient when too few answered or
            # nobody disagreed (nothing is split).
            liar_disagrees = sum(a in ("attacker_key", "random_key") for a, _, _ in liars.values())
            enough = n - f + liar_disagrees >= mpic_needs(n)
            expected = "split_view" if enough and liar_disagrees else "insufficient"
            assert v.status == expected
    else:
        # The client is intercepted: never consistent, whatever the liars say.
        assert v.status not in ACCEPTING
        assert v.agreeing <= f
        if within and honest_span_ok:
            assert v.status == "mitm_suspected"
            assert pin_from_spki_hex(HONEST) in v.quorum_pins
        else:
            assert v.status in ("mitm_suspected", "split_view", "insufficient")


@pytest.mark.parametrize("n", range(3, 10))
def test_fault_tolerance_per_n_is_what_mpic_promises(n: int) -> None:
    """The worked-out guarantee: mpic tolerates 1 bad notary for n <= 5 and 2 for n >= 6."""
    tol = tolerance(n)
    assert tol == (1 if n <= 5 else 2)
    # tol liars reporting a different key: still accepted for the honest client.
    assert run(build(n, n - tol, tol)).ok
    # tol + 1 liars (when n >= 2f+1 still allows it): not accepted, and never mitm_suspected.
    if 2 * (tol + 1) + 1 <= n:
        v = run(build(n, n - tol - 1, tol + 1))
        assert v.status == "split_view"
        v = run(build(n, n - tol - 1, 0))
        assert v.status == "insufficient"


@pytest.mark.parametrize("preset", list(PRESETS))
def test_notary_status_is_the_status_conclude_gives(preset: str) -> None:
    """The early-decision shortcut (no summary built) agrees with conclude on every combination."""
    import itertools

    from client.verdict import NotaryResult, notary_status

    kinds = [("agrees", True), ("agrees", False), ("disagrees", True), ("unreachable", False)]
    pol = PRESETS[preset]
    for cview in (ClientView("ok", "aa" * 32), ClientView("refused", None)):
        for n in range(1, 6):
            for combo in itertools.product(range(len(kinds)), repeat=n):
                results = [NotaryResult(f"n{i}", ["r1", "r2", "unknown"][i % 3], f"k{i}", kinds[c][0], "x",
                                        counted=kinds[c][1], pins=(("sha256/x",) if kinds[c][0] == "disagrees" else ()))
                           for i, c in enumerate(combo)]
                assert notary_status(cview, results, pol) == conclude(cview, results, pol, NOW, host="h", port=1).status
