"""Quorum policies: named presets and custom values.

A policy says how many of the *n notaries asked* must agree, and on what
evidence.  ``n`` is always the number of notaries asked, never the number that
answered: a notary that fails, times out, is excluded or sends an invalid
answer counts against the quorum, never for it.

Presets
-------
``mpic`` (default)
    The CA/Browser Forum multi-perspective issuance corroboration rule (Ballot
    SC-067): with n notaries, n-1 must agree for n <= 5 and n-2 for n >= 6, and
    the agreeing notaries must span at least 2 distinct regions.  A region
    ``unknown`` or empty counts as no region, and the rule is never waived: a
    bundle without 2 regions among the agreeing notaries gives
    ``insufficient``.  At least 2 notaries must be asked.
``consensus``   (Convergence) every notary asked must agree.
``majority``    (Convergence) more than half must agree.
``minority``    (Convergence) at least one notary must agree, and quorum for a
                different key also needs only one: weakest, for users who prefer
                never to be blocked.
``perspectives`` (Perspectives) a quorum fraction (default 0.75, rounded up) of
                notaries must have seen the key, each for at least
                ``quorum_duration`` seconds continuously (from its key history),
                with the weak-consistency rule: a notary agrees if the client's
                key is *any* key it saw for the site within ``history_window``
                (multi-certificate sites).
``proxies``     for ``--via`` SOCKS5 proxy vantages without notaries (or with
                them): every vantage asked, notary or proxy, must have seen the
                client's key (``rule="all"``, ``proxies="count"``); at least one.
                Every notary preset keeps proxies ``advisory`` (shown, never
                counted).  The mixing rules are in :mod:`client.evidence`.

``min_regions`` is the number of distinct known regions the deciding side must
span; 1 (the value of every preset but ``mpic``) means no region requirement.

All presets are CDN-aware: keys are compared by SPKI, notaries are asked to
probe every A/AAAA address of the name (``all_addresses``), and a notary
agrees if the client's key is among the keys it saw on any address.  A key
that no notary has seen is never accepted.

All times are seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from notary.errors import InputError

__all__ = ["Policy", "PRESETS", "get_policy"]


@dataclass(frozen=True, slots=True)
class Policy:
    """How a verdict is reached.  See the module docstring for the presets."""

    name: str = "mpic"
    rule: str = "mpic"  # mpic | all | majority | one | fraction
    quorum_fraction: float = 0.75
    min_notaries: int = 2
    min_regions: int = 2
    max_age: int = 3600
    max_skew: int = 300
    quorum_duration: int = 0
    weak_consistency: bool = False
    history_window: int = 30 * 86400
    all_addresses: bool = True
    proxies: str = "advisory"  # advisory | count: how SOCKS proxy vantages weigh (client.evidence)

    def required(self, n: int) -> int:
        """How many of ``n`` notaries asked must agree (always at least 1)."""
        if self.rule == "mpic":
            need = n - 1 if n <= 5 else n - 2
        elif self.rule == "all":
            need = n
        elif self.rule == "majority":
            need = n // 2 + 1
        elif self.rule == "one":
            need = 1
        elif self.rule == "fraction":
            need = math.ceil(self.quorum_fraction * n - 1e-9)
        else:  # pragma: no cover - validated in with_overrides
            raise InputError(f"unknown quorum rule {self.rule!r}")
        return max(1, need)

    def with_overrides(self, **changes: Any) -> "Policy":
        """A custom policy: this preset with some values changed (validated)."""
        p = replace(self, **{k: v for k, v in changes.items() if v is not None})
        if p.rule not in ("mpic", "all", "majority", "one", "fraction"):
            raise InputError(f"unknown quorum rule {p.rule!r}")
        if not 0 < p.quorum_fraction <= 1:
            raise InputError("quorum_fraction must be in (0, 1]")
        if p.proxies not in ("advisory", "count"):
            raise InputError(f"proxies must be advisory or count, not {p.proxies!r}")
        if p.min_notaries < 1 or p.min_regions < 1 or min(p.max_age, p.max_skew, p.quorum_duration) < 0:
            raise InputError("policy values must be positive")
        return p

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "rule": self.rule, "quorum_fraction": self.quorum_fraction,
            "min_notaries": self.min_notaries, "min_regions": self.min_regions,
            "max_age": self.max_age, "max_skew": self.max_skew,
            "quorum_duration": self.quorum_duration, "weak_consistency": self.weak_consistency,
            "history_window": self.history_window, "all_addresses": self.all_addresses,
            "proxies": self.proxies,
        }


PRESETS: dict[str, Policy] = {
    "mpic": Policy(),
    "consensus": Policy(name="consensus", rule="all", min_notaries=1, min_regions=1),
    "majority": Policy(name="majority", rule="majority", min_notaries=1, min_regions=1),
    "minority": Policy(name="minority", rule="one", min_notaries=1, min_regions=1),
    "perspectives": Policy(
        name="perspectives", rule="fraction", quorum_fraction=0.75, min_notaries=1, min_regions=1,
        quorum_duration=0, weak_consistency=True, max_age=86400,
    ),
    "proxies": Policy(name="proxies", rule="all", min_notaries=1, min_regions=1, proxies="count"),
}


def get_policy(policy: "str | Policy | None") -> Policy:
    """A preset by name, a Policy as is, or the default (``mpic``)."""
    if policy is None:
        return PRESETS["mpic"]
    if isinstance(policy, Policy):
        return policy
    try:
        return PRESETS[policy]
    except KeyError:
        raise InputError(f"unknown policy {policy!r}; choose one of {', '.join(PRESETS)}", "bad_policy") from None
