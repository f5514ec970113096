"""The verdict engine: a pure function from verified evidence to a verdict.

Theory of operation
-------------------
:func:`decide` takes what the client itself saw (:class:`ClientView`), one
:class:`Evidence` per notary *asked* (verified observations, or the reason
there are none), a :class:`~client.policy.Policy` and ``now``.  It does no I/O
and reads no clock.

Per notary it derives one result:

``agrees``        the client's key (SPKI) is among the keys the notary saw on
                  any address of the target (or, with weak consistency, in its
                  key history within the window);
``disagrees``     the notary observed the target and never saw the client's key;
``unreachable``   the notary, or its probe of the target, failed ("could not
                  observe" is never counted as "saw something different");
``bad_signature`` / ``invalid`` / ``stale`` / ``excluded`` / ``not_waited``
                  the answer was rejected by :mod:`client.verify`, the notary's
                  identity did not match the bundle, it duplicated another
                  notary's key, or the decision was made before it answered.

With ``n`` notaries asked, ``A`` counted agreements and ``D`` disagreements:

1. the client could not reach the target                    -> ``unreachable``
2. ``n`` below the policy's minimum                          -> ``insufficient``
3. ``A >= required(n)`` and the agreeing notaries span enough regions
   -> ``consistent`` (``consistent_with_outliers`` if ``D > 0``, naming them)
4. ``D >= required(n)`` and they span enough regions         -> ``mitm_suspected``
5. ``A`` or ``D >= required(n)`` but that side spans too few regions,
   or ``A + D < required(n)``                                -> ``insufficient``
6. otherwise (some notaries saw the client's key, some others) -> ``split_view``

Regions: a side "spans enough regions" when its notaries name at least
``policy.min_regions`` distinct regions.  A region that is ``unknown``, empty
or absent counts as no region at all, so notaries without a region can never
meet a requirement of 2 or more (a ``min_regions`` of 1 is no requirement).
The rule is never waived because the bundle has too few regions: a policy
that cannot be met gives ``insufficient``, with the summary saying why.

Every failure lowers ``A`` and ``D`` and never raises either, so an attacker who
can only silence notaries gets ``insufficient``, never ``consistent``.

Then the other evidence of a :class:`~client.evidence.CheckContext` is weighed
(:mod:`client.evidence` states those rules): SOCKS proxy vantages (unsigned;
counted only under a policy with ``proxies="count"``, and never able to silence
a notary quorum for another key), a declared interceptor (``mitm_suspected``
-> ``intercepted_as_expected``), and the keys this client remembers
(``key_changed``, ``pin_mismatch``).
"""

from __future__ import annotations

# The data types (client._verdict_types), the judging of each notary with the tally of rules 1-6
# (client._verdict_judge) and the conclusion over all (client._verdict_conclude) live in their
# own modules; this one is their public face.  Code calls a name in the module that defines it:
# patch it there, not this module's re-exported copy.
from client._verdict_conclude import _conclude_notaries as _conclude_notaries, _weigh_context as _weigh_context
from client._verdict_conclude import conclude, decide
from client._verdict_judge import _RULE_STATUS as _RULE_STATUS, _UNKNOWN_REGIONS as _UNKNOWN_REGIONS, _judge as _judge
from client._verdict_judge import _known_region as _known_region, _regions as _regions, _spans as _spans
from client._verdict_judge import _Tally as _Tally, _tally as _tally
from client._verdict_judge import judge_all, notary_status
from client._verdict_types import _pin as _pin
from client._verdict_types import ACCEPTING, RESULTS, STATUSES, ClientView, Evidence, NotaryResult, Verdict, outcome_class

__all__ = [
    "ClientView",
    "Evidence",
    "NotaryResult",
    "Verdict",
    "decide",
    "STATUSES",
    "RESULTS",
    "ACCEPTING",
    "outcome_class",
    "judge_all",
    "conclude",
    "notary_status",
]
