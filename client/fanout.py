"""Asking notaries: one task per notary over one :class:`~client.transport.Transport`.

Each notary gets its own timeout and its own task; a failure is a value
(:class:`RawAnswer` with ``error``), never an exception that cancels the others.
Nothing here verifies or counts anything: :mod:`client.verify` does that.

Redirects are never followed (no transport follows them, a caller's aiohttp
session included): a notary, or anyone on the path to an ``http://`` notary,
answering 3xx would otherwise make this machine send the request to another
address.  A 3xx is a bad answer: ``error`` starts with ``redirect`` and
``kind`` is ``invalid``.
"""

from __future__ import annotations

import asyncio
import functools
import json
from dataclasses import dataclass
from typing import Any, Awaitable
from urllib.parse import urlsplit

import aiohttp

from notary.core import Target, canonical_decode
from notary.errors import EncodingError, RemoteError
from client.bundle import BundleEntry
from client.transport import MAX_RESPONSE_BYTES, Transport, as_transport

__all__ = ["RawAnswer", "ask_notary", "ask_untimed", "timed_out", "answer_from_doc", "observe_body",
           "MAX_RESPONSE_BYTES"]


@dataclass(frozen=True, slots=True)
class RawAnswer:
    """What came back from one notary, unverified.  ``error`` set means no usable answer."""

    entry: BundleEntry
    envelopes: list[Any] | None = None
    identity: Any = None
    error: str | None = None
    kind: str = "unreachable"  # the verdict result when ``error`` is set: unreachable | invalid
    freshness: Any = None


class Redirected(Exception):
    """The notary answered a redirect (3xx), which is never followed."""


async def _get_json(transport: Transport, method: str, url: str, data: bytes | None = None) -> Any:
    resp = await transport.request(method, url, body=data, content_type=None if data is None else "application/json")
    if 300 <= resp.status < 400:
        raise Redirected(f"redirect: {method} {urlsplit(url).path} answered HTTP {resp.status} (not followed)")
    if resp.status != 200:
        reason = ""
        try:
            reason = canonical_decode(resp.body).get("reason", "")
        except (EncodingError, AttributeError):
            pass
        raise ValueError(f"HTTP {resp.status} {reason}".strip())
    return canonical_decode(resp.body, max_bytes=MAX_RESPONSE_BYTES)


async def _both(first: Awaitable[Any], second: Awaitable[Any]) -> tuple[Any, Any]:
    """Both results, run concurrently; when either fails (or this is cancelled) the other is
    cancelled too, never left running unbounded after its caller has given up."""
    tasks = [asyncio.ensure_future(first), asyncio.ensure_future(second)]
    try:
        a, b = await asyncio.gather(*tasks)
        return a, b
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()


@functools.lru_cache(maxsize=64)  # one check asks every notary the same body: encoded once
def _observe_bytes(target: Target, nonce: str, max_age: int | None, all_addresses: bool) -> bytes:
    return json.dumps(observe_body(target, nonce, max_age=max_age, all_addresses=all_addresses),
                      separators=(",", ":")).encode()


def observe_body(target: Target, nonce: str, *, max_age: int | None, all_addresses: bool) -> dict[str, Any]:
    """The ``POST /v1/observe`` body for one target (direct, or encrypted for a relay)."""
    body: dict[str, Any] = {"targets": [target.to_json()], "nonce": nonce, "all_addresses": all_addresses}
    if max_age is not None:
        body["max_age"] = max_age
    return body


async def ask_notary(
    transport: Transport | aiohttp.ClientSession,
    entry: BundleEntry,
    target: Target,
    nonce: str,
    *,
    timeout: float,
    max_age: int | None = None,
    all_addresses: bool = True,
    fetch_identity: bool = True,
) -> RawAnswer:
    """POST /v1/observe (and GET /v1/notary alongside) within ``timeout`` seconds.

    ``transport`` is a :class:`~client.transport.Transport` (or an aiohttp session, wrapped).
    """
    try:
        async with asyncio.timeout(timeout):
            return await ask_untimed(transport, entry, target, nonce, timeout=timeout, max_age=max_age,
                                     all_addresses=all_addresses, fetch_identity=fetch_identity)
    except TimeoutError:
        return timed_out(entry, timeout)


def timed_out(entry: BundleEntry, timeout: float) -> RawAnswer:
    """The answer of a notary that did not answer within ``timeout`` seconds."""
    return RawAnswer(entry, error=f"no answer within {timeout:g}s")


async def ask_untimed(
    transport: Transport | aiohttp.ClientSession,
    entry: BundleEntry,
    target: Target,
    nonce: str,
    *,
    timeout: float,
    max_age: int | None = None,
    all_addresses: bool = True,
    fetch_identity: bool = True,
) -> RawAnswer:
    """:func:`ask_notary` without a timer of its own: the caller cancels it after ``timeout``
    seconds (a fan-out bounds all its notaries with one timer) and reports :func:`timed_out`."""
    tr = as_transport(transport)
    body = _observe_bytes(target, nonce, max_age, all_addresses)
    try:
        if fetch_identity:
            doc, identity = await _both(_get_json(tr, "POST", entry.url + "/v1/observe", body),
                                        _get_json(tr, "GET", entry.url + "/v1/notary"))
        else:
            doc, identity = await _get_json(tr, "POST", entry.url + "/v1/observe", body), None
    except TimeoutError:  # the transport's own backstop, before the caller's timeout
        return timed_out(entry, timeout)
    except Redirected as exc:
        return RawAnswer(entry, error=str(exc), kind="invalid")
    except (aiohttp.ClientError, OSError, ValueError, EncodingError, RemoteError) as exc:
        return RawAnswer(entry, error=f"{type(exc).__name__}: {exc}"[:300])
    return answer_from_doc(entry, doc, identity)


def answer_from_doc(entry: BundleEntry, doc: Any, identity: Any) -> RawAnswer:
    """The one target's envelopes and freshness proof of an observe answer ``doc`` (not yet verified)."""
    try:
        results = doc["results"]
        if not isinstance(results, list) or len(results) != 1:
            raise TypeError("expected one result")
        envelopes = results[0]["envelopes"]
        if not isinstance(envelopes, list):
            raise TypeError("envelopes is not a list")
        freshness = results[0].get("freshness")
    except (KeyError, TypeError, IndexError, AttributeError) as exc:
        return RawAnswer(entry, error=f"malformed answer: {exc}")
    return RawAnswer(entry, envelopes=envelopes, identity=identity, freshness=freshness)
