"""The helper's request handler, shared by the native messaging host and the localhost HTTP mode.

Requests are JSON objects with a ``type``:

``{"type": "check", "id"?, "host", "port"?, "ip"?, "observed_pin"? | "chain"?, "fresh"?}``
    Ask the bundle's notaries about ``host:port`` and answer
    ``{"type": "verdict", "id", "cached", "verdict": Verdict.to_json()}``.

    * ``ip``: the address the browser connected to (Chromium).  The helper then
      probes that address itself, from the user's machine, with SNI ``host``:
      it sees what the browser saw on that path.  Without ``ip`` it resolves
      ``host`` with the system resolver.
    * ``observed_pin`` (``sha256/...``) or ``chain`` (a list of base64 DER
      certificates, leaf first; what Firefox's ``getSecurityInfo`` returned):
      what the browser actually saw; the helper does not probe.
    * ``fresh``: bypass the verdict cache.

``{"type": "ping", "id"?}``
    ``{"type": "pong", "id", "version", "policy", "bundle": {...}}``.

Anything else, or a bad field, gets ``{"type": "error", "id", "error": code, "message"}``.

Configuration is found the way the client finds it: the bundle from the
explicit path, else ``$PARALLAX_BUNDLE``, else ``<user config dir>/parallax/bundle.json``;
helper settings from ``$PARALLAX_HELPER_CONFIG`` or
``<user config dir>/parallax/helper.json`` (``policy``, ``timeout``,
``cache_ttl``, ``negative_ttl``, ``max_inflight``, ``operator_keys``, ``bundle``,
``via``, ``isolate``, ``expect_interceptor``, ``memory``), and ``$PARALLAX_POLICY`` overrides the policy.

``memory`` (default true), as ``parallax check`` without ``--no-memory``: every
verification reads and then updates the key memory in the state directory
(:mod:`client.keymemory`, ``<state dir>/keys.sqlite3``, 0600), so a key that
differs from the one this user saw before, with no quorum confirming it, is
``key_changed``, and a key the user pinned (``parallax pins pin``) that is not
the one seen is ``pin_mismatch``.  That file then lists the hosts this browser
visited (as the browser's own history does); ``"memory": false`` keeps nothing,
and ``parallax pins forget HOST`` removes one host.  A cached verdict is not
recorded again.

``via`` is a list of SOCKS5 proxy URLs (``socks5://`` or ``socks5h://``), the
same vantages as ``parallax check --via`` (unsigned; how they weigh is the
policy's, see :mod:`client.evidence`); with ``via`` and no bundle file, the
helper asks the proxies only.  ``expect_interceptor`` is a list of ``sha256/``
pins or paths of issuing CA certificates (PEM/DER) of a declared interceptor.

Several checks run at once (at most ``max_inflight`` verifications; identical
concurrent checks share one).  Verdicts are cached for ``cache_ttl`` seconds,
verdicts that are not a decision (``unreachable``, ``insufficient``) for
``negative_ttl`` seconds.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import json
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import platformdirs

from notary.core import Target, VerifyKey, observed_spki
from notary.core.pins import load_certificate, spki_hex_from_pin
from notary.errors import InputError, ParallaxError, VerificationError
from client.bundle import Bundle, find_bundle_path, load_bundle
from client.keymemory import KeyStore
from client.ohttp import relay_capable
from client.policy import Policy, get_policy
from client.pool import NotaryPool

__all__ = ["HelperConfig", "HelperService", "CheckRequest", "parse_check", "error", "helper_config_path", "VERSION"]

log = logging.getLogger("parallax.helper")

try:
    from importlib.metadata import version as _dist_version

    VERSION = _dist_version("parallax-notary")
except Exception:  # pragma: no cover - running from a source tree without metadata
    VERSION = "0"

MAX_CHAIN = 16
MAX_CERT_BYTES = 64 * 1024
MAX_ID_LEN = 128
_UNDECIDED = frozenset({"unreachable", "insufficient"})


def helper_config_path() -> Path:
    env = os.environ.get("PARALLAX_HELPER_CONFIG")
    if env:
        return Path(env)
    return Path(platformdirs.user_config_dir("parallax")) / "helper.json"


@dataclass(frozen=True)
class HelperConfig:
    """Helper settings.  ``bundle`` None means: ``$PARALLAX_BUNDLE``, then the config dir."""

    bundle: str | None = None
    policy: str = "mpic"
    timeout: float = 10.0
    cache_ttl: float = 120.0
    negative_ttl: float = 15.0
    max_inflight: int = 8
    max_cache: int = 512
    operator_keys: tuple[str, ...] = field(default=())
    #: ``auto`` (default): ask through an Oblivious HTTP relay when the bundle has a
    #: relay-capable notary, else directly; ``none``; or a relay URL (client.ohttp).
    relay: str = "auto"
    via: tuple[str, ...] = field(default=())
    isolate: bool = True
    expect_interceptor: tuple[str, ...] = field(default=())
    #: read and update the key memory (pins, trust-on-first-use key changes); see the module docstring
    memory: bool = True

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, **overrides: Any) -> "HelperConfig":
        """Read ``helper.json`` if present, then ``$PARALLAX_POLICY``, then ``overrides`` (None ignored)."""
        p = Path(path) if path else helper_config_path()
        values: dict[str, Any] = {}
        try:
            raw = p.read_bytes()[: 1 << 16]
        except FileNotFoundError:
            raw = b""
        except OSError as exc:
            raise InputError(f"cannot read helper config {p}: {exc.strerror}", "bad_config") from None
        if raw:
            try:
                doc = json.loads(raw)
            except ValueError:
                raise InputError(f"helper config {p} is not JSON", "bad_config") from None
            if not isinstance(doc, dict):
                raise InputError(f"helper config {p} must be a JSON object", "bad_config")
            for k in ("bundle", "policy", "timeout", "cache_ttl", "negative_ttl", "max_inflight", "max_cache", "operator_keys",
                      "relay", "via", "isolate", "expect_interceptor", "memory"):
                if k in doc:
                    listed = k in ("operator_keys", "via", "expect_interceptor")
                    if listed and not (isinstance(doc[k], list) and all(isinstance(x, str) for x in doc[k])):
                        raise InputError(f"helper config {k} must be a list of strings", "bad_config")
                    values[k] = tuple(doc[k]) if listed else doc[k]
        if os.environ.get("PARALLAX_POLICY"):
            values["policy"] = os.environ["PARALLAX_POLICY"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        get_policy(self.policy)
        for name in ("timeout", "cache_ttl", "negative_ttl"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                raise InputError(f"helper config {name} must be a non-negative number", "bad_config")
        if not isinstance(self.max_inflight, int) or self.max_inflight < 1:
            raise InputError("helper config max_inflight must be a positive integer", "bad_config")
        if not isinstance(self.relay, str) or not (self.relay in ("auto", "none") or self.relay.startswith(("http://", "https://"))):
            raise InputError("helper config relay must be auto, none or an http(s) URL", "bad_config")
        if not isinstance(self.isolate, bool):
            raise InputError("helper config isolate must be true or false", "bad_config")
        if not isinstance(self.memory, bool):
            raise InputError("helper config memory must be true or false", "bad_config")
        from client.socks import MAX_VIAS, parse_via

        if len(self.via) > MAX_VIAS:
            raise InputError(f"helper config via holds more than {MAX_VIAS} proxies", "bad_config")
        for v in self.via:
            try:
                parse_via(v)
            except InputError as exc:
                raise InputError(f"helper config via: {exc}", "bad_config") from None
        self.interceptors()

    def interceptors(self) -> tuple[list[str | bytes], list[bytes]]:
        """``expect_interceptor`` resolved: (pins and CA certificates, the CA certificates as DER)."""
        out: list[str | bytes] = []
        cas: list[bytes] = []
        for e in self.expect_interceptor:
            try:
                if e.startswith("sha256/"):
                    spki_hex_from_pin(e)
                    out.append(e)
                else:
                    der = load_certificate(Path(e).read_bytes()[: 1 << 20])
                    out.append(der)
                    cas.append(der)
            except (InputError, OSError) as exc:
                raise InputError(f"helper config expect_interceptor {e!r}: {exc}", "bad_config") from None
        return out, cas


@dataclass(frozen=True)
class CheckRequest:
    target: Target
    ip: str | None = None
    observed: Any = None  # a sha256/ pin, the leaf's DER, or the helper's own ClientView
    observed_spki: str | None = None
    fresh: bool = False


def error(rid: Any, code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "id": rid, "error": code, "message": message}


def parse_check(msg: dict[str, Any]) -> CheckRequest:
    """Validate a check request.  Raises :class:`InputError`."""
    port = msg.get("port", 443)
    if not isinstance(port, int) or isinstance(port, bool):
        raise InputError("port must be an integer", "bad_port")
    host = msg.get("host")
    if not isinstance(host, str) or not host:
        raise InputError("host must be a non-empty string", "bad_host")
    target = Target.parse(host.strip("[]"), port)
    ip = msg.get("ip")
    if ip is not None:
        if not isinstance(ip, str):
            raise InputError("ip must be a string", "bad_ip")
        try:
            ip = str(ipaddress.ip_address(ip.strip("[]")))
        except ValueError:
            raise InputError(f"ip {ip!r} is not an IP address", "bad_ip") from None
    pin, chain = msg.get("observed_pin"), msg.get("chain")
    if pin is not None and chain is not None:
        raise InputError("give observed_pin or chain, not both")
    observed: bytes | str | None = None
    if pin is not None:
        spki = spki_hex_from_pin(pin)
        observed = pin
    elif chain is not None:
        if not isinstance(chain, list) or not 1 <= len(chain) <= MAX_CHAIN:
            raise InputError(f"chain must be a list of 1 to {MAX_CHAIN} base64 DER certificates", "bad_certificate")
        ders = []
        for c in chain:
            if not isinstance(c, str) or len(c) > MAX_CERT_BYTES * 4 // 3 + 4:
                raise InputError("each chain entry must be base64 DER of at most 64 KiB", "bad_certificate")
            try:
                ders.append(base64.b64decode(c, validate=True))
            except (binascii.Error, ValueError):
                raise InputError("chain entries must be base64", "bad_certificate") from None
        observed = load_certificate(ders[0])
        spki = observed_spki(observed)
    else:
        spki = None
    fresh = msg.get("fresh", False)
    if not isinstance(fresh, bool):
        raise InputError("fresh must be a boolean")
    return CheckRequest(target, ip, observed, spki, fresh)


class HelperService:
    """Answers helper requests.  One per process; call :meth:`close` at the end."""

    def __init__(
        self,
        config: HelperConfig | None = None,
        *,
        verify: Callable[..., Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or HelperConfig()
        self.policy: Policy = get_policy(self.config.policy)
        self._expect, self._cas = self.config.interceptors()
        self._verify = verify
        self._clock = clock
        self._sem = asyncio.Semaphore(self.config.max_inflight)
        self._cache: OrderedDict[tuple[Any, ...], tuple[float, dict[str, Any]]] = OrderedDict()
        self._inflight: dict[tuple[Any, ...], asyncio.Task[dict[str, Any]]] = {}
        self._pool: "NotaryPool | None" = None
        self._memory: KeyStore | None = None
        self.verifications = 0  # how many verifications actually ran (tests, metrics)

    # -- configuration ----------------------------------------------------------

    def load_bundle(self) -> Bundle:
        keys = []
        for k in self.config.operator_keys:
            try:
                keys.append(VerifyKey.from_b64(k))
            except VerificationError:
                raise InputError("helper config operator_keys holds a bad key", "bad_config") from None
        if self.config.via and not find_bundle_path(self.config.bundle).exists():
            return Bundle(())  # proxies only
        return load_bundle(self.config.bundle, keys)

    # -- requests ---------------------------------------------------------------

    async def handle(self, msg: dict[str, Any]) -> dict[str, Any]:
        """One response object for one request object.  Never raises (except cancellation)."""
        rid = msg.get("id")
        if rid is not None and (isinstance(rid, bool) or not isinstance(rid, (str, int)) or len(str(rid)) > MAX_ID_LEN):
            return error(None, "bad_request", f"id must be a string or integer of at most {MAX_ID_LEN} characters")
        kind = msg.get("type")
        try:
            if kind == "check":
                return await self.check(parse_check(msg), rid)
            if kind == "ping":
                return self.ping(rid)
        except InputError as exc:
            return error(rid, exc.code, str(exc))
        except VerificationError as exc:
            return error(rid, "bad_bundle", str(exc))
        except ParallaxError as exc:
            return error(rid, "failed", str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: report it, keep serving
            log.exception("internal error handling a %s request", kind)
            return error(rid, "internal", f"{type(exc).__name__}: {exc}")
        return error(rid, "unknown_type", f"unknown request type {kind!r}; expected check or ping")

    def ping(self, rid: Any) -> dict[str, Any]:
        bundle: dict[str, Any] = {"path": str(find_bundle_path(self.config.bundle))}
        try:
            b = self.load_bundle()
            bundle.update(notaries=len(b.notaries), signed_by=b.signed_by)
        except ParallaxError as exc:
            bundle["error"] = str(exc)
        from client.socks import parse_via

        return {"type": "pong", "id": rid, "version": VERSION, "policy": self.policy.name, "bundle": bundle,
                "vantages": [parse_via(v).label for v in self.config.via]}

    async def check(self, req: CheckRequest, rid: Any = None) -> dict[str, Any]:
        if req.observed is None and self._verify is None:
            # Chromium mode: probe from this machine first, and key the cache by the key
            # seen *now*, so a cached "consistent" never hides an interception that
            # started after it (the probe is one handshake; the notaries are the cost).
            req = await self._probe_first(req)
        key = (req.target.host, req.target.port, req.target.sni, req.ip, req.observed_spki, self.policy.name)
        task = None
        if not req.fresh:
            hit = self._cache.get(key)
            if hit and hit[0] > self._clock():
                self._cache.move_to_end(key)
                return {"type": "verdict", "id": rid, "cached": True, "verdict": hit[1]}
            task = self._inflight.get(key)
        shared = task is not None
        if task is None:
            # The verification runs in its own task: a requester that goes away
            # does not cancel it for the others waiting on the same check.
            task = asyncio.create_task(self._run_and_cache(req, key))
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._done(key, t))
        verdict = await asyncio.shield(task)
        return {"type": "verdict", "id": rid, "cached": shared, "verdict": verdict}

    async def _probe_first(self, req: CheckRequest) -> CheckRequest:
        from client.api import client_probe

        connect_to = (req.ip, req.target.port) if req.ip else None
        view = await client_probe(req.target, timeout=self.config.timeout, connect_to=connect_to, extra_cas=self._cas)
        if view.status != "ok" or not view.spki_sha256:
            return req  # verify_with_notaries probes again and reports "unreachable"
        return replace(req, observed=view, observed_spki=view.spki_sha256)

    def _done(self, key: tuple[Any, ...], task: "asyncio.Task[dict[str, Any]]") -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved here; every requester still gets it from its await

    async def _run_and_cache(self, req: CheckRequest, key: tuple[Any, ...]) -> dict[str, Any]:
        verdict = await self._run(req)
        ttl = self.config.negative_ttl if verdict.get("status") in _UNDECIDED else self.config.cache_ttl
        if ttl > 0:
            self._cache[key] = (self._clock() + ttl, verdict)
            self._cache.move_to_end(key)
            while len(self._cache) > self.config.max_cache:
                self._cache.popitem(last=False)
        return verdict

    async def _run(self, req: CheckRequest) -> dict[str, Any]:
        bundle = self.load_bundle()
        async with self._sem:
            self.verifications += 1
            if self._verify is not None:
                v = await self._verify(req, bundle, self.policy)
                return v if isinstance(v, dict) else v.to_json()
            from client.api import verify_with_notaries

            if self._pool is None or self._pool.closed:
                self._pool = NotaryPool()  # kept-alive connections to the notaries, closed in close()
            if self.config.memory and self._memory is None:
                self._memory = KeyStore()  # the state directory's key memory, as `parallax check` uses
            connect_to = (req.ip, req.target.port) if req.ip and req.observed is None else None
            relay: str | None = self.config.relay
            if relay == "auto" and not relay_capable(bundle):
                relay = None  # the bundle allows no relay: ask directly
            verdict = await verify_with_notaries(
                req.target.host, req.target.port, bundle=bundle, policy=self.policy, observed=req.observed,
                timeout=self.config.timeout, connect_to=connect_to, session=self._pool, relay=relay,
                via=self.config.via, isolate=self.config.isolate, expect_interceptor=self._expect, memory=self._memory,
            )
            log.debug("check %s -> %s", req.target, verdict.status)
            return verdict.to_json()

    def clear_cache(self) -> None:
        self._cache.clear()

    async def close(self) -> None:
        for t in list(self._inflight.values()):
            t.cancel()
        if self._inflight:
            await asyncio.gather(*self._inflight.values(), return_exceptions=True)
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
