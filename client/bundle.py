"""Notary bundles: the list of notaries a client trusts, optionally signed by an operator.

A bundle file is JSON, either plain::

    {"version": 1, "notaries": [ENTRY, ...]}

or a DSSE envelope (payload type :data:`BUNDLE_TYPE`) whose payload is that
object plus two fields, signed by an operator key::

    {"version": 1, "bundle_version": N, "expires": T, "notaries": [ENTRY, ...]}

``bundle_version`` is the operator's monotonic version of the bundle (an
integer, 1 to 2**53-1) and ``expires`` the unix time (seconds) from which the
bundle is no longer valid.  A signed bundle is verified against the operator
key(s) the caller trusts *before* it is parsed, like an observation; then it is
refused when ``now >= expires`` (``bundle_expired``) or when its
``bundle_version`` is lower than the highest the client has accepted for that
operator key (``bundle_rollback``; :mod:`client.bundle_state` keeps those).
A signed payload without both fields is refused.  A plain bundle may carry
them; nothing is enforced for it (the user built it).

An entry is what ``parallax notary-info`` prints: ``name``, ``url``,
``region``, optional ``country`` and ``rir``, ``key_id`` and ``public_key``
(base64 Ed25519), and optional ``relay`` (``true``: the notary runs an
Oblivious HTTP relay for this bundle at ``<url>/v1/relay/<key_id>``, so
``--relay auto`` may pick it).  The key id must match the public key; duplicate keys,
duplicate names and duplicate URLs are refused.

Lookup order: an explicit path, ``$PARALLAX_BUNDLE``, then
``<user config dir>/parallax/bundle.json`` (XDG on Linux, via platformdirs).
"""

from __future__ import annotations

import functools

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import urlsplit

import platformdirs

from notary.core import SigningKey, VerifyKey, canonical_decode, canonical_encode, sign_envelope, verify_envelope
from notary.errors import EncodingError, InputError, VerificationError

__all__ = [
    "BUNDLE_TYPE", "BundleEntry", "Bundle", "find_bundle_path", "load_bundle", "merge_entries",
    "sign_bundle", "default_bundle_path", "parse_bundle", "check_signed_bundle",
]

BUNDLE_TYPE = "application/vnd.parallax.bundle+json; version=1"
MAX_BUNDLE_BYTES = 1 << 20
MAX_NOTARIES = 256
MAX_INT = 2**53 - 1  # the largest integer canonical JSON carries exactly


def _good_url(url: str) -> bool:
    """An http(s) base URL with a host, a valid port (if any), and no query, fragment or whitespace.

    Paths like ``/v1/observe`` are appended to it, so a query or fragment would swallow them.
    """
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        return False
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.query and not parts.fragment \
        and not url.endswith(("?", "#"))


@functools.lru_cache(maxsize=1024)
def _verify_key(public_key: str) -> VerifyKey:
    """Parsed once per key (every check of every answer needs it); VerifyKey is immutable."""
    return VerifyKey.from_b64(public_key)


@dataclass(frozen=True, slots=True)
class BundleEntry:
    name: str
    url: str
    region: str
    key_id: str
    public_key: str
    country: str | None = None
    rir: str | None = None
    relay: bool = False

    @property
    def verify_key(self) -> VerifyKey:
        return _verify_key(self.public_key)

    @classmethod
    def from_json(cls, d: Any) -> "BundleEntry":
        if not isinstance(d, Mapping):
            raise InputError("a bundle entry must be a JSON object", "bad_bundle")
        for k in ("name", "url", "key_id", "public_key"):
            if not isinstance(d.get(k), str) or not d.get(k):
                raise InputError(f"bundle entry field {k!r} must be a non-empty string", "bad_bundle")
        region = d.get("region") or "unknown"
        if not isinstance(region, str):
            raise InputError("bundle entry region must be a string", "bad_bundle")
        if not _good_url(d["url"]):
            raise InputError(f"bundle entry {d['name']!r} has a bad url {d['url']!r}", "bad_bundle")
        try:
            key = VerifyKey.from_b64(d["public_key"])
        except VerificationError:
            raise InputError(f"bundle entry {d['name']!r} has a bad public key", "bad_bundle") from None
        if key.key_id != d["key_id"]:
            raise InputError(f"bundle entry {d['name']!r}: key_id does not match public_key", "bad_bundle")
        opt = {k: d.get(k) for k in ("country", "rir")}
        for k, v in opt.items():
            if v is not None and not isinstance(v, str):
                raise InputError(f"bundle entry field {k!r} must be a string", "bad_bundle")
        relay = d.get("relay", False)
        if not isinstance(relay, bool):
            raise InputError(f"bundle entry {d['name']!r}: relay must be true or false", "bad_bundle")
        return cls(d["name"], d["url"].rstrip("/"), region, d["key_id"], d["public_key"], opt["country"], opt["rir"],
                   relay)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "url": self.url, "region": self.region,
                             "key_id": self.key_id, "public_key": self.public_key}
        if self.country:
            d["country"] = self.country
        if self.rir:
            d["rir"] = self.rir
        if self.relay:
            d["relay"] = True
        return d


def _opt_int(d: Mapping[str, Any], key: str) -> int | None:
    v = d.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_INT:
        raise InputError(f"bundle field {key!r} must be an integer from 1 to {MAX_INT}", "bad_bundle")
    return v


def _utc(t: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@dataclass(frozen=True, slots=True)
class Bundle:
    """A list of notaries.  ``bundle_version``/``expires`` (unix seconds) are set on signed bundles."""

    notaries: tuple[BundleEntry, ...]
    signed_by: str | None = None
    bundle_version: int | None = None
    expires: int | None = None

    def __post_init__(self) -> None:
        if len(self.notaries) > MAX_NOTARIES:
            raise InputError(f"a bundle holds at most {MAX_NOTARIES} notaries", "bad_bundle")
        for attr, what in (("key_id", "key"), ("name", "name"), ("url", "url")):
            seen: set[str] = set()
            for e in self.notaries:
                v = getattr(e, attr)
                if v in seen:
                    raise InputError(f"duplicate notary {what} in bundle: {v}", "duplicate_notary")
                seen.add(v)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"version": 1, "notaries": [e.to_json() for e in self.notaries]}
        if self.bundle_version is not None:
            d["bundle_version"] = self.bundle_version
        if self.expires is not None:
            d["expires"] = self.expires
        return d

    @classmethod
    def from_json(cls, d: Any, signed_by: str | None = None) -> "Bundle":
        if not isinstance(d, Mapping) or d.get("version") != 1 or not isinstance(d.get("notaries"), list):
            raise InputError('a bundle is {"version": 1, "notaries": [...]}', "bad_bundle")
        return cls(tuple(BundleEntry.from_json(e) for e in d["notaries"]), signed_by,
                   _opt_int(d, "bundle_version"), _opt_int(d, "expires"))

    def add(self, entry: BundleEntry) -> "Bundle":
        """This bundle's notaries plus ``entry``, as a plain (unsigned, unversioned) bundle."""
        return Bundle(self.notaries + (entry,))

    def describe_signature(self) -> str:
        """One line: who signed it, its version and expiry (empty for a plain bundle)."""
        if self.signed_by is None:
            return ""
        exp = _utc(self.expires) if self.expires is not None else "never"
        return f"signed by {self.signed_by}, version {self.bundle_version}, expires {exp}"

    def by_key(self) -> dict[str, BundleEntry]:
        return {e.key_id: e for e in self.notaries}


def parse_bundle(raw: bytes, operator_keys: Sequence[VerifyKey] = (), *, now: int | None = None,
                 highest: Mapping[str, int] | None = None) -> Bundle:
    """Parse bundle bytes (pure).  A signed bundle must verify against one of ``operator_keys``.

    With ``now`` (unix seconds), a signed bundle is also checked with
    :func:`check_signed_bundle` against ``highest`` (operator key id -> highest
    ``bundle_version`` accepted before).
    """
    try:
        doc = canonical_decode(raw, max_bytes=MAX_BUNDLE_BYTES)
    except EncodingError as exc:
        raise InputError(f"bundle is not valid JSON: {exc}", "bad_bundle") from None
    if isinstance(doc, Mapping) and "payloadType" in doc:
        if not operator_keys:
            raise VerificationError("bundle is signed; give the operator's public key (--operator-key) to verify it")
        verified = verify_envelope(doc, {k.key_id: k for k in operator_keys}, BUNDLE_TYPE, max_payload_bytes=MAX_BUNDLE_BYTES)
        bundle = Bundle.from_json(verified.payload, signed_by=verified.key_id)
        if bundle.bundle_version is None or bundle.expires is None:
            raise InputError("signed bundle has no bundle_version and expires (signed by an older parallax?); "
                             "ask its operator for a bundle signed with --version and --expires", "bad_bundle")
        if now is not None:
            check_signed_bundle(bundle, now=now, highest=(highest or {}).get(bundle.signed_by or ""))
        return bundle
    if operator_keys:
        raise VerificationError("an operator key was given but the bundle is not signed")
    return Bundle.from_json(doc)


def check_signed_bundle(bundle: Bundle, *, now: int, highest: int | None) -> None:
    """Refuse an expired signed bundle, or one older than the ``highest`` version accepted (pure).

    Raises :class:`InputError` with code ``bundle_expired`` (``now >= expires``) or
    ``bundle_rollback`` (``bundle_version < highest``).  The same version again is accepted.
    A plain bundle passes.
    """
    if bundle.signed_by is None:
        return
    assert bundle.bundle_version is not None and bundle.expires is not None
    if now >= bundle.expires:
        raise InputError(f"signed bundle version {bundle.bundle_version} expired at {_utc(bundle.expires)}; "
                         "get a current one from its operator", "bundle_expired")
    if highest is not None and bundle.bundle_version < highest:
        raise InputError(f"signed bundle version {bundle.bundle_version} is older than version {highest}, already "
                         f"accepted from operator key {bundle.signed_by} (a replayed old bundle?)", "bundle_rollback")


def default_bundle_path() -> Path:
    return Path(platformdirs.user_config_dir("parallax")) / "bundle.json"


def find_bundle_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``explicit``, else ``$PARALLAX_BUNDLE``, else the user config dir."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("PARALLAX_BUNDLE")
    if env:
        return Path(env)
    return default_bundle_path()


def load_bundle(path: str | os.PathLike[str] | None = None, operator_keys: Sequence[VerifyKey] = (), *,
                now: int | None = None, state_dir: str | os.PathLike[str] | None = None) -> Bundle:
    """Find and load a bundle (see :func:`find_bundle_path`).  Raises InputError/VerificationError.

    A signed bundle is checked for expiry at ``now`` (default: the clock) and against
    the highest version accepted before for its operator key, which is then raised to
    this bundle's version (:mod:`client.bundle_state`, in ``state_dir`` or the default
    state directory).  An unusable state file raises :class:`~notary.errors.ConfigError`.
    """
    p = find_bundle_path(path)
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_BUNDLE_BYTES + 1)
    except FileNotFoundError:
        raise InputError(f"no bundle at {p} (use --bundle, PARALLAX_BUNDLE or 'parallax bundle add')", "no_bundle") from None
    except OSError as exc:
        raise InputError(f"cannot read bundle {p}: {exc.strerror}", "io_error") from None
    bundle = parse_bundle(raw, operator_keys)
    if bundle.signed_by is not None:
        from client.bundle_state import BundleState

        state = BundleState(state_dir)
        check_signed_bundle(bundle, now=int(time.time()) if now is None else now, highest=state.highest(bundle.signed_by))
        assert bundle.bundle_version is not None
        state.accept(bundle.signed_by, bundle.bundle_version)
    return bundle


def merge_entries(entries: Iterable[Any]) -> Bundle:
    """Merge entries (dicts as printed by notary-info, or bundles' notaries) into one bundle."""
    out: list[BundleEntry] = []
    for item in entries:
        if isinstance(item, Mapping) and "notaries" in item:
            out.extend(Bundle.from_json(item).notaries)
        else:
            out.append(BundleEntry.from_json(item))
    return Bundle(tuple(out))


def sign_bundle(bundle: Bundle, key: SigningKey, *, version: int, expires: int) -> dict[str, Any]:
    """A DSSE envelope of the bundle signed by an operator key.

    Signed: the RFC 8785 bytes of ``{"version": 1, "bundle_version": version,
    "expires": expires, "notaries": [...]}``.  ``version`` is the monotonic bundle
    version, ``expires`` unix seconds; both 1 to 2**53-1.
    """
    from dataclasses import replace

    signed = replace(bundle, signed_by=None, bundle_version=version, expires=expires)
    Bundle.from_json(signed.to_json())  # validates version and expires
    return sign_envelope(BUNDLE_TYPE, canonical_encode(signed.to_json()), key)


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2) + "\n"
