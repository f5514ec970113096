"""A cap on the bytes of one answer (amplification defence).

A request of about 1 KB could produce an answer of megabytes (16 targets, each
with up to 8 addresses, each with a chain of up to 64 KiB, base64 twice).  The
notary caps the envelopes of one answer at ``max_answer_bytes`` (advertised in
the identity document's ``limits``).  Envelopes are kept in request order
while they fit; each one that does not is replaced by a signed observation of
the same target and address with status ``answer_too_large`` (no chain, no key
history), which tells the client to ask for that target on its own.  Room for
those replacements (at most :data:`REPLACEMENT_BYTES` each) is set aside first,
so the whole answer stays under the cap.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Callable

__all__ = ["REPLACEMENT_BYTES", "TARGET_OVERHEAD", "cap_answer"]

#: An upper bound of one replacement envelope's JSON size (a detail of at most 200 characters).
REPLACEMENT_BYTES = 2048
#: Per-target JSON around the envelopes, a bound: the target (host and SNI up to 253
#: characters each), and the freshness proof (its statement envelope, the leaf and an
#: inclusion path of at most 10 hashes for a batch of 1,024 leaves).
TARGET_OVERHEAD = 3000

SignError = Callable[[dict[str, Any], str | None, str], dict[str, Any]]


def _size(envelope: dict[str, Any]) -> int:
    return len(json.dumps(envelope, separators=(",", ":")))


def _payload(envelope: dict[str, Any]) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(base64.b64decode(envelope["payload"]))
    return payload


def cap_answer(groups: list[list[dict[str, Any]]], max_bytes: int, sign_error: SignError) -> tuple[list[list[dict[str, Any]]], int]:
    """Envelopes per target, capped; returns them and how many were replaced.

    ``sign_error(target_json, ip, detail)`` signs the ``answer_too_large`` replacement.
    """
    count = sum(map(len, groups))
    sizes = [[_size(e) for e in g] for g in groups]
    if sum(map(sum, sizes)) + TARGET_OVERHEAD * len(groups) <= max_bytes:
        return groups, 0
    fixed = TARGET_OVERHEAD * len(groups)
    used = 0  # kept envelopes' sizes plus REPLACEMENT_BYTES per replacement so far
    seen = 0
    replaced = 0
    out: list[list[dict[str, Any]]] = []
    for group, group_sizes in zip(groups, sizes):
        kept: list[dict[str, Any]] = []
        for env, size in zip(group, group_sizes):
            seen += 1
            # Keep it only if every envelope after it could still be replaced within the cap.
            if fixed + used + size + REPLACEMENT_BYTES * (count - seen) <= max_bytes:
                kept.append(env)
                used += size
                continue
            payload = _payload(env)
            kept.append(sign_error(payload["target"], payload.get("ip"),
                                   f"the answer would exceed max_answer_bytes ({max_bytes}); ask for this target alone"))
            used += REPLACEMENT_BYTES
            replaced += 1
        out.append(kept)
    return out, replaced
