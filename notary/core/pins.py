"""Certificate fingerprints, SPKI pins and leaf summaries (pure; no I/O).

* ``leaf_sha256``: lower-case hex SHA-256 of the leaf certificate's DER.
* ``spki_sha256``: lower-case hex SHA-256 of the leaf's DER SubjectPublicKeyInfo.
* pin: ``"sha256/" + base64(SHA-256(SPKI))``, the HPKP / curl ``--pinnedpubkey`` form.

Keys are compared by SPKI, never by certificate: a site that renews its
certificate over the same key keeps the same pin.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from notary.core.canonical import b64decode_strict
from notary.errors import EncodingError, InputError

__all__ = [
    "LeafSummary",
    "spki_sha256",
    "leaf_sha256",
    "pin_from_spki_hex",
    "spki_hex_from_pin",
    "summarize_leaf",
    "load_certificate",
    "observed_spki",
]


def _cert(der: bytes) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError:
        raise InputError("not a DER X.509 certificate", "bad_certificate") from None


def load_certificate(data: bytes | str) -> bytes:
    """Accept PEM text/bytes or DER bytes; return DER.  Raises InputError."""
    if isinstance(data, str):
        data = data.encode("ascii", "replace")
    if b"-----BEGIN" in data:
        try:
            return x509.load_pem_x509_certificate(data).public_bytes(serialization.Encoding.DER)
        except ValueError:
            raise InputError("not a PEM X.509 certificate", "bad_certificate") from None
    _cert(data)
    return bytes(data)


def _der_element(buf: bytes, i: int) -> tuple[int, int, int]:
    """One DER TLV at ``buf[i:]``: (tag byte, content start, element end).  Raises ValueError."""
    if i + 2 > len(buf):
        raise ValueError("truncated DER")
    tag = buf[i]
    if tag & 0x1F == 0x1F:
        raise ValueError("high-tag-number form not expected here")
    length = buf[i + 1]
    pos = i + 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or pos + n > len(buf):
            raise ValueError("bad DER length")
        length = int.from_bytes(buf[pos : pos + n], "big")
        pos += n
    end = pos + length
    if end > len(buf):
        raise ValueError("truncated DER")
    return tag, pos, end


def _spki_der(cert: x509.Certificate) -> bytes:
    """The leaf's SubjectPublicKeyInfo exactly as encoded in the certificate.

    Taken from the raw tbsCertificate rather than re-encoded from a parsed key,
    so a certificate whose key algorithm or curve ``cryptography`` does not
    support still has a pin (and cannot crash a probe or a verifier).
    """
    tbs = cert.tbs_certificate_bytes
    tag, pos, end = _der_element(tbs, 0)
    if tag != 0x30:
        raise ValueError("tbsCertificate is not a SEQUENCE")
    tag, _, nxt = _der_element(tbs, pos)
    if tag == 0xA0:  # [0] EXPLICIT version
        pos = nxt
    # serialNumber, signature, issuer, validity, subject, then subjectPublicKeyInfo.
    for _ in range(5):
        _, _, pos = _der_element(tbs, pos)
    tag, _, spki_end = _der_element(tbs, pos)
    if tag != 0x30 or spki_end > end:
        raise ValueError("subjectPublicKeyInfo is not a SEQUENCE")
    return tbs[pos:spki_end]


def spki_sha256(der: bytes) -> str:
    """Lower-case hex SHA-256 of the leaf's DER SubjectPublicKeyInfo.  Raises InputError."""
    cert = _cert(der)
    try:
        spki = _spki_der(cert)
    except ValueError:
        raise InputError("certificate has no parseable subjectPublicKeyInfo", "bad_certificate") from None
    return hashlib.sha256(spki).hexdigest()


def leaf_sha256(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


_HEX64 = re.compile(r"[0-9a-f]{64}")


def pin_from_spki_hex(spki_hex: str) -> str:
    """``sha256/<base64>`` from 64 lower-case hex digits; raise InputError (code ``bad_spki``)."""
    if not isinstance(spki_hex, str) or not _HEX64.fullmatch(spki_hex):
        raise InputError("an SPKI SHA-256 is 64 lower-case hex digits", "bad_spki")
    return "sha256/" + base64.b64encode(bytes.fromhex(spki_hex)).decode("ascii")


def spki_hex_from_pin(pin: str) -> str:
    """Parse ``sha256/<base64>`` into hex; raise InputError (code ``bad_pin``)."""
    if not isinstance(pin, str) or not pin.startswith("sha256/"):
        raise InputError("a pin looks like sha256/<base64 of 32 bytes>", "bad_pin")
    try:
        raw = b64decode_strict(pin[7:])
    except EncodingError:
        raise InputError("pin is not valid canonical base64", "bad_pin") from None
    if len(raw) != 32:
        raise InputError("a sha256 pin decodes to 32 bytes", "bad_pin")
    return raw.hex()


def observed_spki(observed: bytes | str) -> str:
    """The SPKI hex of what a caller observed: a ``sha256/`` pin, a PEM or a DER certificate."""
    if isinstance(observed, str) and observed.startswith("sha256/"):
        return spki_hex_from_pin(observed)
    return spki_sha256(load_certificate(observed))


def _ts(dt: Any) -> int:
    return int(dt.timestamp())


@dataclass(frozen=True, slots=True)
class LeafSummary:
    """Human-facing facts about the leaf.  Times are unix seconds (UTC)."""

    subject: str
    issuer: str
    sans: tuple[str, ...]
    not_before: int
    not_after: int

    def to_json(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "sans": list(self.sans),
            "not_before": self.not_before,
            "not_after": self.not_after,
        }

    @classmethod
    def from_json(cls, d: Any) -> "LeafSummary":
        if not isinstance(d, dict):
            raise InputError("leaf summary must be an object")
        sans = d.get("sans")
        if not isinstance(sans, list) or not all(isinstance(s, str) for s in sans):
            raise InputError("leaf.sans must be a list of strings")
        for k in ("subject", "issuer"):
            if not isinstance(d.get(k), str):
                raise InputError(f"leaf.{k} must be a string")
        for k in ("not_before", "not_after"):
            if not isinstance(d.get(k), int) or isinstance(d.get(k), bool):
                raise InputError(f"leaf.{k} must be an integer")
        return cls(d["subject"], d["issuer"], tuple(sans), d["not_before"], d["not_after"])


_MAX_SANS = 100


def summarize_leaf(der: bytes) -> LeafSummary:
    """Summarise a leaf certificate; tolerant of odd certificates (best effort, never raises on extensions)."""
    cert = _cert(der)
    sans: list[str] = []
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        for name in ext:
            if isinstance(name, x509.DNSName):
                sans.append("DNS:" + name.value)
            elif isinstance(name, x509.IPAddress):
                sans.append("IP:" + str(name.value))
            if len(sans) >= _MAX_SANS:
                break
    except (x509.ExtensionNotFound, x509.DuplicateExtension, x509.UnsupportedGeneralNameType, ValueError):
        pass

    def rfc4514(get: Any) -> str:
        try:
            return str(get().rfc4514_string())[:1024]
        except ValueError:
            return "<unparseable>"

    return LeafSummary(
        subject=rfc4514(lambda: cert.subject),
        issuer=rfc4514(lambda: cert.issuer),
        sans=tuple(sans),
        not_before=_ts(cert.not_valid_before_utc),
        not_after=_ts(cert.not_valid_after_utc),
    )
