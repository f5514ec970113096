"""Asking notaries: one task per notary over one shared aiohttp session.

Each notary gets its own timeout and its own task; a failure is a value
(:class:`RawAnswer` with ``error``), never an exception that cancels the others.
Nothing here verifies or counts anything: :mod:`client.verify` does that.

Redirects are never followed (``allow_redirects=False`` on every request, so
also on a session the caller passes in): a notary, or anyone on the path to an
``http://`` notary, answering 3xx would otherwise make this machine send the
request to another address.  A 3xx is a bad answer: ``error`` starts with
``redirect`` and ``kind`` is ``invalid``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp

from notary.core import Target, canonical_decode
from notary.errors import EncodingError
from notary.httputil import read_capped
from client.bundle import BundleEntry

__all__ = ["RawAnswer", "ask_notary", "answer_from_doc", "observe_body", "MAX_RESPONSE_BYTES"]

MAX_RESPONSE_BYTES = 4 << 20


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


async def _get_json(session: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> Any:
    async with session.request(method, url, json=body, allow_redirects=False) as resp:
        if 300 <= resp.status < 400:
            raise Redirected(f"redirect: {method} {resp.url.path} answered HTTP {resp.status} (not followed)")
        raw = await read_capped(resp.content, MAX_RESPONSE_BYTES)
        if resp.status != 200:
            reason = ""
            try:
                reason = canonical_decode(raw).get("reason", "")
            except (EncodingError, AttributeError):
                pass
            raise ValueError(f"HTTP {resp.status} {reason}".strip())
        return canonical_decode(raw, max_bytes=MAX_RESPONSE_BYTES)


def observe_body(target: Target, nonce: str, *, max_age: int | None, all_addresses: bool) -> dict[str, Any]:
    """The ``POST /v1/observe`` body for one target (direct, or encrypted for a relay)."""
    body: dict[str, Any] = {"targets": [target.to_json()], "nonce": nonce, "all_addresses": all_addresses}
    if max_age is not None:
        body["max_age"] = max_age
    return body


async def ask_notary(
    session: aiohttp.ClientSession,
    entry: BundleEntry,
    target: Target,
    nonce: str,
    *,
    timeout: float,
    max_age: int | None = None,
    all_addresses: bool = True,
    fetch_identity: bool = True,
) -> RawAnswer:
    """POST /v1/observe (and GET /v1/notary alongside) within ``timeout`` seconds."""
    body = observe_body(target, nonce, max_age=max_age, all_addresses=all_addresses)
    try:
        async with asyncio.timeout(timeout):
            jobs = [_get_json(session, "POST", entry.url + "/v1/observe", body)]
            if fetch_identity:
                jobs.append(_get_json(session, "GET", entry.url + "/v1/notary"))
            got = await asyncio.gather(*jobs)
    except TimeoutError:
        return RawAnswer(entry, error=f"no answer within {timeout:g}s")
    except Redirected as exc:
        return RawAnswer(entry, error=str(exc), kind="invalid")
    except (aiohttp.ClientError, OSError, ValueError, EncodingError) as exc:
        return RawAnswer(entry, error=f"{type(exc).__name__}: {exc}"[:300])
    return answer_from_doc(entry, got[0], got[1] if fetch_identity else None)


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
