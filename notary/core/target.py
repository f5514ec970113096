"""Targets: host names, ports, SNI and client nonces, validated and normalised.

A host is stored and signed as an IDNA 2008 A-label (UTS #46 mapping), lower
case, with no trailing dot, at most 253 bytes; or as a canonical IP address
literal.  Underscores are allowed in all-ASCII labels (``_dmarc.example.com``),
which IDNA 2008 alone would refuse; see :func:`_to_alabel`.  IPv4 addresses written in the legacy forms that ``inet_aton`` and
resolvers accept (``2130706433``, ``0x7f.1``, ``0177.0.0.1``) are normalised to
dotted quad first, so that the address policy sees the address they really name.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

import idna

from notary.errors import InputError

__all__ = [
    "Target",
    "normalize_host",
    "parse_legacy_ipv4",
    "is_ip_literal",
    "validate_port",
    "validate_nonce",
    "NONCE_MIN",
    "NONCE_MAX",
    "split_target",
    "TARGET_FORMS",
]

NONCE_MIN = 16
NONCE_MAX = 128
_NONCE_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_LABEL_RE = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")
_NUM_PART = re.compile(r"^(0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*)$")


def parse_legacy_ipv4(text: str) -> ipaddress.IPv4Address | None:
    """Parse ``text`` the way ``inet_aton`` does (1-4 parts, decimal/octal/hex).

    Returns None when ``text`` is not such a spelling.
    """
    parts = text.split(".")
    if not 1 <= len(parts) <= 4 or not all(_NUM_PART.match(p) for p in parts):
        return None
    values = []
    for p in parts:
        if p[:2] in ("0x", "0X"):
            values.append(int(p[2:] or "0", 16))
        elif len(p) > 1 and p[0] == "0":
            values.append(int(p, 8))
        else:
            values.append(int(p))
    # The last part fills the remaining bytes.
    head, last = values[:-1], values[-1]
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        return None
    n = 0
    for v in head:
        n = (n << 8) | v
    n = (n << (8 * (4 - len(head)))) | last
    return ipaddress.IPv4Address(n)


@functools.lru_cache(maxsize=4096)  # pure; asked on every probe (a failed parse raises: slow)
def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def normalize_host(host: object) -> str:
    """Return the canonical form of ``host`` or raise :class:`InputError` (code ``bad_host``).

    Results for valid names are memoised (bounded LRU): IDNA mapping is costly on hot paths.
    """
    if not isinstance(host, str) or not host:
        raise InputError("host must be a non-empty string", "bad_host")
    if len(host) > 1024:
        raise InputError("host name too long", "bad_host")
    return _normalize_host(host)


@functools.lru_cache(maxsize=4096)
def _normalize_host(host: str) -> str:
    h = host.strip()
    if h != host or any(c.isspace() for c in h):
        raise InputError("host must not contain whitespace", "bad_host")
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if ":" in h:
        try:
            if "%" in h:  # zone ids name an interface, not a host
                raise ValueError(h)
            addr = ipaddress.IPv6Address(h)
        except ValueError:
            raise InputError(f"not a valid host name or address: {host!r}", "bad_host") from None
        return str(addr)
    # Map first (UTS #46: full-width digits, ideographic full stops...), so that a
    # legacy IPv4 spelling written in compatibility characters ("１２７。０。０。１",
    # "０x７f000001") is seen as the address it names, not as a host name.
    try:
        mapped = idna.uts46_remap(h, std3_rules=False, transitional=False)
    except (idna.IDNAError, UnicodeError, ValueError):
        raise InputError(f"not a valid host name: {host!r}", "bad_host") from None
    if mapped.endswith("."):
        mapped = mapped[:-1]
    if not mapped or ".." in mapped:
        raise InputError(f"not a valid host name: {host!r}", "bad_host")
    legacy = parse_legacy_ipv4(mapped)
    if legacy is not None:
        return str(legacy)
    try:
        labels = [_to_alabel(lab) for lab in mapped.split(".")]
    except (idna.IDNAError, UnicodeError, ValueError):
        raise InputError(f"not a valid host name: {host!r}", "bad_host") from None
    alabel = ".".join(labels)
    if len(alabel) > 253:
        raise InputError("host name longer than 253 bytes", "bad_host")
    if not all(_LABEL_RE.match(lab) for lab in labels):
        raise InputError(f"not a valid host name: {host!r}", "bad_host")
    if labels[-1].isdigit():
        raise InputError(f"not a valid host name: {host!r}", "bad_host")
    return alabel


def _to_alabel(label: str) -> str:
    """One label as an A-label, lower case.  The one rule for underscores lives here.

    IDNA 2008 refuses ``_``, but DNS names use it (``_dmarc.example.com``, SRV-style
    ``_sip._tcp`` labels, some CDN host names), so an all-ASCII label holding an
    underscore skips IDNA and is checked by :data:`_LABEL_RE` alone (letters, digits,
    ``-`` and ``_``; no leading or trailing ``-``; 1-63 bytes).  Every other label goes
    through IDNA 2008, which refuses ``_`` in a label that is not all ASCII.
    """
    if "_" in label and label.isascii():
        return label.lower()
    return idna.encode(label, uts46=True, transitional=False).decode("ascii").lower()


def validate_port(port: object) -> int:
    if isinstance(port, bool) or not isinstance(port, int):
        if isinstance(port, str) and port.isascii() and port.isdigit() and len(port) <= 5:
            port = int(port)
        else:
            raise InputError("port must be an integer", "bad_port")
    if not 1 <= port <= 65535:
        raise InputError(f"port out of range: {port}", "bad_port")
    return port


def validate_nonce(nonce: object) -> str:
    """A nonce is 16-128 characters of base64url alphabet (``[A-Za-z0-9_-]``)."""
    if not isinstance(nonce, str) or not NONCE_MIN <= len(nonce) <= NONCE_MAX or not _NONCE_RE.fullmatch(nonce):
        raise InputError(
            f"nonce must be {NONCE_MIN}-{NONCE_MAX} characters of [A-Za-z0-9_-]", "bad_nonce"
        )
    return nonce


@dataclass(frozen=True, slots=True)
class Target:
    """What to probe: a normalised host, a port, and the SNI to send (None: no SNI)."""

    host: str
    port: int
    sni: str | None

    @classmethod
    def parse(cls, host: object, port: object = 443, sni: object = None) -> "Target":
        """Validate and normalise.  SNI defaults to the host, and is never sent for IP literals.

        Memoised (bounded LRU) for the plain types a request carries: a notary parses
        the same few targets again and again.  Invalid input is never cached.
        """
        if cls is Target and type(host) is str and type(port) is int and (sni is None or type(sni) is str):
            return _parse_plain(host, port, sni)
        return cls._parse(host, port, sni)

    @classmethod
    def _parse(cls, host: object, port: object, sni: object) -> "Target":
        h = normalize_host(host)
        p = validate_port(port)
        if sni is None:
            s = None if is_ip_literal(h) else h
        else:
            s = normalize_host(sni)
            if is_ip_literal(s):
                raise InputError("SNI must be a host name, not an address", "bad_sni")
        return cls(h, p, s)

    def to_json(self) -> dict[str, object]:
        return {"host": self.host, "port": self.port, "sni": self.sni}

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


# -- targets as people paste them ------------------------------------------------

TARGET_FORMS = "HOST, HOST:PORT, [IPv6]:PORT or https://HOST[:PORT][/path]"


def split_target(text: object, default_port: int = 443) -> tuple[str, int]:
    """Split a target as people paste it into a normalised ``(host, port)``.

    Accepts ``example.com``, ``example.com:8443``, ``https://example.com:8443/path``
    (path, query and fragment ignored, with or without the scheme; only the ``https`` scheme, whose default
    port is 443), IDN names (``bücher.example``, returned as an A-label), IPv4
    literals, and IPv6 literals bare (``2001:db8::1``, default port) or in brackets
    (``[2001:db8::1]:443``).  ``default_port`` applies when no port is given.
    Raises :class:`InputError` (code ``bad_target``) naming the accepted forms.
    """
    if not isinstance(text, str):
        raise InputError(f"a target must be a string; expected {TARGET_FORMS}", "bad_target")
    t = text.strip()

    def bad(why: str) -> InputError:
        return InputError(f"{why}: {text!r}; expected {TARGET_FORMS}", "bad_target")

    if "://" in t:
        scheme, _, t = t.partition("://")
        if scheme.lower() != "https":
            raise bad(f"only https:// URLs can be checked, not {scheme}://")
        if "@" in re.split(r"[/?#]", t, maxsplit=1)[0]:
            raise bad("a URL with user information is not a target")
    t = re.split(r"[/?#]", t, maxsplit=1)[0]  # example.com/login: the path is not part of the target
    if not t:
        raise bad("empty target")
    port_text = ""
    if t.startswith("["):
        host, sep, rest = t[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise bad("bad bracketed IPv6 address")
        port_text = rest[1:] if rest else ""
        if rest and not port_text:
            raise bad("empty port")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad("not an IPv6 address in brackets") from None
    elif t.count(":") > 1:
        host = t  # a bare IPv6 literal: no port possible without brackets
    else:
        host, sep, port_text = t.partition(":")
        if sep and not port_text:
            raise bad("empty port")
    try:
        port = validate_port(port_text) if port_text else validate_port(default_port)
        return normalize_host(host), port
    except InputError as exc:
        raise bad(str(exc)) from None


@functools.lru_cache(maxsize=4096)
def _parse_plain(host: str, port: int, sni: str | None) -> Target:
    # Exact types only (checked by the caller): True == 1 must never hit port 1's entry.
    return Target._parse(host, port, sni)
