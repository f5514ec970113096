"""The notary's signing path: observations signed once, freshness signed in batches.

Two signers, both thin shells over :mod:`notary.core`:

* :func:`sign_round` signs each probe result of a round once, as an
  observation (protocol version 2), and returns the envelopes with their
  digests.  The service caches them with the round: every later answer from
  the cache serves the same envelope bytes, unsigned again.
* :class:`FreshnessBatcher` binds requests' nonces to those observations.
  :meth:`~FreshnessBatcher.stamp` queues one freshness leaf and waits; the
  first leaf of a scheduling turn schedules a flush with ``loop.call_soon``, so
  every request that reaches the signer in the same turn of the event loop
  joins the batch.  The flush hashes the leaves, signs *one* freshness
  statement over their Merkle root (Roughtime-style batching, RFC 9162 hashing)
  and hands each waiter its leaf, index and inclusion path.  A batch holds at
  most ``max_batch`` leaves (a fuller turn is split), so paths stay short.

What is signed: see :mod:`notary.core.freshness`.  Signing is synchronous
Ed25519 (tens of microseconds); nothing here does I/O.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any, Callable, Sequence

from notary.core import (
    OBSERVATION_TYPE,
    KeySighting,
    Observation,
    ProbeResult,
    SigningKey,
    leaf_bytes,
    observation_digest,
    sign_envelope,
    sign_statement,
)
from notary.core import canonical, merkle

__all__ = ["SignedRound", "sign_round", "Answer", "FreshnessBatcher", "proofs_json"]


class SignedRound:
    """One probe round with its observation envelopes, each signed once, and their digests.

    ``envelopes_json`` is the JSON text of the envelope list, serialised once:
    answers from the cache splice it into the response instead of encoding
    the (certificate-sized) envelopes again.

    ``allowed_under`` is the (frozen) address policy under which the service last
    found the round servable, so a cached answer checks the policy in force
    with one identity comparison; another policy object means a full check.
    """

    __slots__ = ("results", "envelopes", "digests", "envelopes_json", "allowed_under")

    def __init__(self, results: list[ProbeResult], envelopes: list[dict[str, Any]], digests: list[str]) -> None:
        self.results = results
        self.envelopes = envelopes
        self.digests = digests
        self.envelopes_json = json.dumps(envelopes, separators=(",", ":"))
        self.allowed_under: object = None

    @property
    def observed_at(self) -> int:
        return self.results[0].observed_at


def sign_round(results: Sequence[ProbeResult], key: SigningKey, history: tuple[KeySighting, ...]) -> SignedRound:
    """Sign each result of a round as an observation (with the target's key history as of now)."""
    envelopes, digests = [], []
    for r in results:
        obs = Observation.from_probe(r, notary=key.key_id, key_history=history)
        payload = canonical.encode(obs.to_payload())  # encoded once: signed and digested as these bytes
        envelopes.append(sign_envelope(OBSERVATION_TYPE, payload, key))
        digests.append(observation_digest(payload))
    return SignedRound(list(results), envelopes, digests)


class Answer:
    """One target's answer: the round's observation envelopes and this request's freshness proof.

    The notary keeps the proof as JSON text (``freshness_json``, spliced into the
    response); ``freshness`` parses it on first use when given none.
    """

    __slots__ = ("envelopes", "envelopes_json", "_freshness", "freshness_json")

    def __init__(self, signed: SignedRound, freshness: dict[str, Any] | None, freshness_json: str) -> None:
        self.envelopes = signed.envelopes
        self.envelopes_json = signed.envelopes_json
        self._freshness = freshness
        self.freshness_json = freshness_json

    @property
    def freshness(self) -> dict[str, Any]:
        if self._freshness is None:
            self._freshness = json.loads(self.freshness_json)
        return self._freshness

    def to_json(self) -> dict[str, Any]:
        return {"envelopes": self.envelopes, "freshness": self.freshness}

    def json_members(self) -> str:
        """``"envelopes":[...],"freshness":{...}`` as JSON text (for a response built by splicing)."""
        return '"envelopes":' + self.envelopes_json + ',"freshness":' + self.freshness_json


def proofs_json(statement: dict[str, Any], leaves: Sequence[bytes], paths: Sequence[Sequence[bytes]]) -> list[str]:
    """The JSON text of each leaf's ``freshness`` member (what :func:`~notary.core.freshness_proof` returns,
    serialised compactly), written out directly: the statement is serialised once per batch, and
    base64 and lower-case hex need no escaping.  Tests check it parses to ``freshness_proof``'s object.
    """
    head = '{"statement":' + json.dumps(statement, separators=(",", ":")) + ',"leaf":"'
    out = []
    for i, (leaf, path) in enumerate(zip(leaves, paths)):
        hexes = '","'.join([h.hex() for h in path])
        out.append(head + base64.b64encode(leaf).decode("ascii") + '","index":' + str(i)
                   + (',"path":["' + hexes + '"]}' if path else ',"path":[]}'))
    return out


class FreshnessBatcher:
    """Batches freshness leaves of one event loop turn under one signed statement."""

    def __init__(self, key: SigningKey, clock: Callable[[], int], *, max_batch: int = 1024) -> None:
        if not 1 <= max_batch <= merkle.MAX_TREE_SIZE:
            raise ValueError("max_batch out of range")
        self.key = key
        self.clock = clock
        self.max_batch = max_batch
        self._pending: list[tuple[bytes, asyncio.Future[str]]] = []
        self._scheduled = False
        self.statements = 0
        self.leaves = 0

    async def stamp(self, nonce: str, digests: Sequence[str], source: str) -> dict[str, Any]:
        """The ``freshness`` member binding ``nonce`` to the observations ``digests``."""
        return json.loads(await self.stamp_json(nonce, digests, source))  # type: ignore[no-any-return]

    async def stamp_with_json(self, nonce: str, digests: Sequence[str], source: str) -> tuple[dict[str, Any], str]:
        """:meth:`stamp`, and the member's JSON text."""
        text = await self.stamp_json(nonce, digests, source)
        return json.loads(text), text

    async def stamp_json(self, nonce: str, digests: Sequence[str], source: str) -> str:
        """The JSON text of the ``freshness`` member (what the notary sends; :meth:`stamp` parses it)."""
        return await self.submit(nonce, digests, source)

    def submit(self, nonce: str, digests: Sequence[str], source: str) -> "asyncio.Future[str]":
        """Queue a leaf; the future gets :meth:`stamp_json`'s text when this turn's batch is signed.

        Raises at once (``ValueError``, :class:`~notary.errors.EncodingError`) for a leaf that
        cannot be encoded.  The hot path awaits the future itself (no coroutine frame).
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[str] = loop.create_future()
        self._pending.append((leaf_bytes(nonce, digests, source), fut))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), self.max_batch):
            self._sign([p for p in pending[start:start + self.max_batch] if not p[1].done()])

    def _sign(self, batch: list[tuple[bytes, asyncio.Future[str]]]) -> None:
        if not batch:
            return
        try:
            leaves = [leaf for leaf, _ in batch]
            root, paths = merkle.tree_paths([merkle.leaf_hash(leaf) for leaf in leaves])
            texts = proofs_json(sign_statement(self.key, self.clock(), root, len(leaves)), leaves, paths)
            self.statements += 1
            self.leaves += len(batch)
            for (_, fut), text in zip(batch, texts):
                if not fut.done():
                    fut.set_result(text)
        except Exception as exc:  # every waiter gets it; none is left hanging
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
