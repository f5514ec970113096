"""Evidence besides the notaries' signed observations, and the pure rules that weigh it.

Pure like :mod:`client.verdict` (no I/O, no clock: ``now`` is passed in).  Three kinds:

**Proxy vantages** (:class:`ProxyView`, from :mod:`client.socks`): what the
target showed when probed through a SOCKS5 proxy the user named.  Unsigned: a
proxy's report is worth exactly the user's trust in the proxy *and in the path
to it* (a plain SOCKS5 proxy reached over the intercepted network can itself be
intercepted; ``ssh -D`` and Tor are encrypted to their far end).  How proxies
mix with notaries is the policy's ``proxies`` setting (:mod:`client.policy`):

``advisory`` (default of every notary preset)
    Proxies are shown, labelled unsigned, and never counted: the status is the
    notaries'.  A proxy that saw another key while the notaries agree with you
    is named as an outlier (``consistent_with_outliers``).  With no notaries,
    proxies alone give ``insufficient``, whatever they saw.
``count`` (the ``proxies`` preset, or ``--proxies count``)
    Each proxy is one more vantage in the quorum (``n`` = notaries + proxies
    asked; a failed proxy counts against, like a failed notary; proxies have
    no region).  Proxies alone can then give ``consistent`` or ``mitm_suspected``.
    One rule is never relaxed: if the signed notaries alone reach
    ``mitm_suspected``, the verdict is ``mitm_suspected`` whatever the proxies
    say.  Unsigned evidence may raise an alarm; it never silences a signed one.

**Expected interceptors** (:class:`Expectation`): keys (``sha256/`` SPKI pins)
of an interceptor the user declared (a company or school proxy).  The client's
view matches when its leaf key is such a key, or when such a key *verifiably
signed* the leaf's chain (:mod:`client.interception` checks the signatures, so
a chain that merely includes the interceptor's CA certificate does not match).
A match turns ``mitm_suspected`` into ``intercepted_as_expected``; any other
status is kept and the match is stated.  Off unless declared, always shown.

**Remembered keys** (:class:`KeyMemory`, from :mod:`client.keymemory`): the
keys this client saw before for the same host, port and SNI (trust on first
use with a second opinion).  A key is *vouched* when some earlier check judged
it anything but an alarm (an undecided check in which some vantage saw another
key is recorded as ``disputed`` and does not vouch either).  With the client's key:

* nothing remembered                      -> ``first_use`` (information);
* a vouched key                           -> ``known``;
* a new key, the verdict accepts it        -> ``rotation`` (information);
* a new key, the verdict is ``mitm_suspected`` -> ``changed`` (the alarm stands);
* a new key, expected interception         -> ``interceptor`` (information);
* a new key, no quorum either way (``insufficient``/``split_view``)
                                           -> ``changed``, and the status becomes
                                              ``key_changed`` (an alarm).

A user's pinned key for the host (``parallax pins pin``) must match: otherwise
the status becomes ``pin_mismatch`` (not when the client saw no key, and not
when the mismatch is the declared interceptor's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from notary.core import pin_from_spki_hex

__all__ = [
    "ProxyView",
    "VantageResult",
    "judge_proxy",
    "PROXY_MODES",
    "Expectation",
    "InterceptionNote",
    "match_interceptor",
    "KnownKey",
    "KeyMemory",
    "MemoryNote",
    "remember_note",
    "ALARMS",
    "judgement",
    "CheckContext",
]

PROXY_MODES = ("advisory", "count")
#: Judgements that do not vouch for a key in the memory: alarms, and undecided checks in which
#: some vantage saw another key (``disputed``, see :func:`judgement`).
ALARMS = frozenset({"mitm_suspected", "key_changed", "pin_mismatch", "unreachable", "disputed"})


@dataclass(frozen=True, slots=True)
class ProxyView:
    """What one SOCKS5 proxy vantage saw.  ``status``: ``ok``, a probe error status, or ``proxy_failed``."""

    label: str
    status: str
    spki_sha256: str | None = None
    ip: str | None = None
    detail: str | None = None
    remote_dns: bool = False


@dataclass(frozen=True, slots=True)
class VantageResult:
    """A proxy vantage judged against the client's key.  Always ``signed=False``."""

    name: str
    result: str  # agrees | disagrees | unreachable | proxy_failed
    reason: str
    counted: bool
    pins: tuple[str, ...] = ()
    ip: str | None = None
    remote_dns: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "proxy", "signed": False, "result": self.result, "reason": self.reason,
                "counted": self.counted, "pins": list(self.pins), "ip": self.ip,
                "dns": "at the proxy" if self.remote_dns else "local"}


def judge_proxy(view: ProxyView, client_spki: str | None, *, counted: bool) -> VantageResult:
    """Compare one proxy's view with the client's key (``counted``: the policy counts proxies)."""
    def result(result: str, reason: str, counted: bool = False, pins: tuple[str, ...] = ()) -> VantageResult:
        return VantageResult(view.label, result, reason, counted, pins, view.ip, view.remote_dns)

    if view.status == "proxy_failed":
        return result("proxy_failed", f"proxy failed: {view.detail or 'no detail'}")
    if view.status != "ok" or not view.spki_sha256:
        why = f"{view.status}: {view.detail}" if view.detail else view.status
        return result("unreachable", f"could not reach the target through the proxy ({why})")
    pins = (pin_from_spki_hex(view.spki_sha256),)
    if client_spki and view.spki_sha256 == client_spki:
        return result("agrees", "saw the same key (unsigned)", counted, pins)
    return result("disagrees", "saw a different key (unsigned)", counted, pins)


# -- expected interception -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Expectation:
    """Declared interceptor keys: SPKI SHA-256 hex (from ``sha256/`` pins or CA certificate files)."""

    keys: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class InterceptionNote:
    expected: tuple[str, ...]  # sha256/ pins declared
    matched: str | None  # the declared pin that matched the client's view, if any

    def to_json(self) -> dict[str, Any]:
        return {"expected": list(self.expected), "matched": self.matched}


def match_interceptor(expect: Expectation, proven_keys: tuple[str, ...]) -> InterceptionNote | None:
    """None when nothing is declared; else which declared key (if any) is among ``proven_keys``."""
    if not expect.keys:
        return None
    hit = next((k for k in expect.keys if k in proven_keys), None)
    return InterceptionNote(tuple(pin_from_spki_hex(k) for k in expect.keys), pin_from_spki_hex(hit) if hit else None)


# -- remembered keys ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class KnownKey:
    """One key remembered for a (host, port, SNI): unix seconds, and how many checks judged it what."""

    spki_sha256: str
    first_seen: int
    last_seen: int
    statuses: tuple[tuple[str, int], ...] = ()

    @property
    def vouched(self) -> bool:
        """Some earlier check judged this key something other than an alarm (TOFU counts)."""
        return any(s not in ALARMS for s, _ in self.statuses)

    def to_json(self) -> dict[str, Any]:
        return {"pin": pin_from_spki_hex(self.spki_sha256), "first_seen": self.first_seen, "last_seen": self.last_seen,
                "statuses": dict(self.statuses), "vouched": self.vouched}


@dataclass(frozen=True, slots=True)
class KeyMemory:
    """What this client remembers for one (host, port, SNI): keys seen, and keys the user pinned (hex)."""

    keys: tuple[KnownKey, ...] = ()
    pinned: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MemoryNote:
    change: str  # first_use | known | rotation | changed | interceptor | none
    detail: str
    previous: tuple[str, ...] = ()  # sha256/ pins of the vouched keys remembered before this check
    first_seen: int | None = None
    pinned: str | None = None  # None (no pin) | match | mismatch

    def to_json(self) -> dict[str, Any]:
        return {"change": self.change, "detail": self.detail, "previous": list(self.previous),
                "first_seen": self.first_seen, "pinned": self.pinned}


def _ago(now: int, t: int) -> str:
    d = max(0, now - t)
    return f"{d // 86400}d ago" if d >= 86400 else f"{d // 3600}h ago" if d >= 3600 else f"{d}s ago"


def judgement(status: str, disagreements: int) -> str:
    """What the memory records for a check: its status, or ``disputed`` when it reached no decision
    (``insufficient``/``split_view``) and some vantage saw another key (never vouched: trust on first
    use does not extend to a key that a second opinion contradicted)."""
    if status in ("insufficient", "split_view") and disagreements > 0:
        return "disputed"
    return status


def remember_note(memory: KeyMemory, client_spki: str | None, status: str, now: int) -> tuple[str, MemoryNote]:
    """Combine the remembered keys with the status reached so far: (new status, note).  See the module docstring."""
    vouched = [k for k in memory.keys if k.vouched]
    previous = tuple(pin_from_spki_hex(k.spki_sha256) for k in vouched)
    if not client_spki:
        return status, MemoryNote("none", "no key seen, nothing compared", previous)
    pinned = None
    if memory.pinned:
        pinned = "match" if client_spki in memory.pinned else "mismatch"
    mine = next((k for k in memory.keys if k.spki_sha256 == client_spki), None)
    if mine is not None and mine.vouched:
        note = MemoryNote("known", f"you have seen this key since {_ago(now, mine.first_seen)}", previous, mine.first_seen, pinned)
    elif not vouched:
        extra = " (this key was seen before, but only in alarms)" if mine is not None else ""
        note = MemoryNote("first_use", f"no key remembered for this host yet{extra}; this one is from now on", previous,
                          pinned=pinned)
    elif status in ("consistent", "consistent_with_outliers"):
        note = MemoryNote("rotation", "the key differs from the one(s) you saw before, and the vantages see the new key "
                          "(a key rotation)", previous, pinned=pinned)
    elif status == "intercepted_as_expected":
        note = MemoryNote("interceptor", "the key differs from the one(s) you saw before: it is your declared "
                          "interceptor's", previous, pinned=pinned)
    else:
        note = MemoryNote("changed", "the key differs from the one(s) you saw before, and no quorum of vantages "
                          "confirms the new key", previous, pinned=pinned)
        if status in ("insufficient", "split_view"):
            status = "key_changed"
    if pinned == "mismatch" and status != "intercepted_as_expected":
        status = "pin_mismatch"
    return status, note


@dataclass(frozen=True, slots=True)
class CheckContext:
    """Everything besides the notaries that a verdict weighs (all optional)."""

    proxies: tuple[ProxyView, ...] = ()
    expect: Expectation = field(default_factory=Expectation)
    memory: KeyMemory | None = None
