"""Which keys provably stand behind a presented chain (to recognise a declared interceptor).

Pure (no I/O, no clock).  A chain a server presents is attacker-controlled:
anyone can append a company's CA certificate to it.  So a declared interceptor
matches only keys that are *proven*:

* the leaf's key (the TLS handshake proved possession of its private key);
* the key of a certificate that signed the leaf, then of one that signed that
  certificate, and so on up the presented chain, each signature checked with
  ``cryptography`` (``verify_directly_issued_by``: issuer name and signature);
* the key of a CA certificate the user supplied (``--expect-interceptor FILE``)
  that signed any certificate on that verified path.

The walk stops at the first link that does not verify; the chain is at most
:data:`notary.core.observation.MAX_CHAIN_CERTS` certificates.

A site presents the same chain on every visit, and the walk checks a signature
per link, so results are remembered (:data:`PROVEN_CACHE` entries, keyed by
the exact DER bytes of the chain and of the declared CAs: a pure function of them).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

from cryptography import x509

from notary.core import spki_sha256

__all__ = ["proven_keys", "PROVEN_CACHE"]

#: How many (chain, declared CAs) results are remembered (LRU).
PROVEN_CACHE = 256
_proven: "OrderedDict[tuple[tuple[bytes, ...], tuple[bytes, ...]], tuple[str, ...]]" = OrderedDict()


def _load(der: bytes) -> x509.Certificate | None:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError:
        return None


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except Exception:  # InvalidSignature, ValueError (names differ), TypeError (unsupported key types)
        return False
    return True


def proven_keys(chain: Sequence[bytes], extra_cas: Sequence[bytes] = ()) -> tuple[str, ...]:
    """SPKI SHA-256 hex of the leaf key and of every key proven to have signed the path up from it."""
    if not chain:
        return ()
    key = (tuple(chain), tuple(extra_cas))
    hit = _proven.get(key)
    if hit is not None:
        _proven.move_to_end(key)
        return hit
    out = _walk(chain, extra_cas)
    _proven[key] = out
    while len(_proven) > PROVEN_CACHE:
        _proven.popitem(last=False)
    return out


def _walk(chain: Sequence[bytes], extra_cas: Sequence[bytes]) -> tuple[str, ...]:
    certs = [c for c in (_load(d) for d in chain[:10]) if c is not None]
    leaf = _load(chain[0])
    if leaf is None:
        return ()
    out = [spki_sha256(chain[0])]
    current, current_der = leaf, chain[0]
    rest = list(zip(chain[1:10], certs[1:])) if len(certs) == len(chain[:10]) else []
    used = {current_der}
    path = [leaf]
    progressed = True
    while progressed:
        progressed = False
        for der, cert in rest:
            if der not in used and _issued_by(current, cert):
                out.append(spki_sha256(der))
                used.add(der)
                current, current_der = cert, der
                path.append(cert)
                progressed = True
                break
    for der in extra_cas:
        ca = _load(der)
        if ca is not None and any(_issued_by(c, ca) for c in path):
            key = spki_sha256(der)
            if key not in out:
                out.append(key)
    return tuple(out)
