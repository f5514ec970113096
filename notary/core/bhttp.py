"""Binary HTTP messages (RFC 9292): the plaintext that Oblivious HTTP encrypts.

Theory of operation.  A binary HTTP message is a framing indicator (a QUIC
variable-length integer: 0 known-length request, 1 known-length response, 2
indeterminate-length request, 3 indeterminate-length response) followed by
control data (method, scheme, authority, path; or a status code), a header
field section, content, a trailer field section and zero padding.

* Known-length sections carry their length up front; indeterminate-length
  ones end with a zero (a field line with an empty name, or a zero-length
  chunk).
* A message may be *truncated* where content or trailers begin: a decoder
  treats the end of the data there as empty content / an empty trailer
  section (RFC 9292 section 3.8).  A message that ends right after its
  control data is read as having an empty header section too, as RFC 9458
  Appendix A's request does (``GET https://example.com/`` in 25 bytes).  Anything after the message must be zero
  bytes of padding; a non-zero byte there is an error.
* Interim (1xx) responses precede the final one in a response.

:func:`decode_request` and :func:`decode_response` read both forms;
:func:`encode_request` and :func:`encode_response` write the known-length
form.  Field names are lower-cased on output (HTTP/2 and HTTP/3 style); field
values and control data are octets, held here as ``str`` decoded as
ISO-8859-1 (one character per byte, so nothing is lost).

Limits: ``max_bytes`` bounds the whole message (default 1 MiB) and
:data:`MAX_FIELDS` the field lines of one section.  Every malformed, truncated
or over-long input raises :class:`~notary.errors.OhttpError` (code
``bad_bhttp``).  Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from notary.errors import OhttpError

__all__ = [
    "Request", "Response", "Fields", "decode_request", "decode_response", "encode_request",
    "encode_response", "encode_varint", "MAX_FIELDS", "MAX_MESSAGE_BYTES", "pad", "request_padded_size",
    "response_bucket", "REQUEST_PAD_BYTES", "RESPONSE_MIN_BUCKET",
]

Fields = tuple[tuple[str, str], ...]

MAX_FIELDS = 128
MAX_MESSAGE_BYTES = 1 << 20
#: Requests are zero-padded to a multiple of this many bytes (every Parallax request fits one).
REQUEST_PAD_BYTES = 1024
#: Responses are zero-padded to a power of two of at least this many bytes.  8 KiB: a
#: protocol-2 answer (observation, freshness proof, identity) for a site with a small ECDSA
#: chain is just under 4 KiB and one with an RSA chain just over, so a 4 KiB floor would
#: split common sites into two buckets (tests/test_ohttp_hardening.py checks one bucket).
RESPONSE_MIN_BUCKET = 8192

_KNOWN_REQUEST, _KNOWN_RESPONSE, _INDET_REQUEST, _INDET_RESPONSE = 0, 1, 2, 3


def _err(reason: str) -> OhttpError:
    return OhttpError(f"binary HTTP message: {reason}", "bad_bhttp")


@dataclass(frozen=True, slots=True)
class Request:
    """A request: control data, header fields, content and trailer fields."""

    method: str
    scheme: str
    authority: str
    path: str
    headers: Fields = ()
    content: bytes = b""
    trailers: Fields = ()

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        return _first(self.headers, name)


@dataclass(frozen=True, slots=True)
class Response:
    """A final response (status 200-599) and any interim (1xx) responses before it."""

    status: int
    headers: Fields = ()
    content: bytes = b""
    trailers: Fields = ()
    informational: tuple[tuple[int, Fields], ...] = ()

    def header(self, name: str) -> str | None:
        return _first(self.headers, name)


def _first(fields: Fields, name: str) -> str | None:
    name = name.lower()
    return next((v for k, v in fields if k.lower() == name), None)


# -- variable-length integers (RFC 9000 section 16) -------------------------------------------

def encode_varint(value: int) -> bytes:
    """The shortest QUIC variable-length encoding of ``0 <= value < 2**62``."""
    if value < 0 or value >= 1 << 62:
        raise ValueError("varint out of range")
    if value < 1 << 6:
        return value.to_bytes(1, "big")
    if value < 1 << 14:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 1 << 30:
        return (value | 0x8000_0000).to_bytes(4, "big")
    return (value | 0xC000_0000_0000_0000).to_bytes(8, "big")


class _Reader:
    """A cursor over the message bytes; every read checks the remaining length."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def varint(self, what: str) -> int:
        pos, data = self.pos, self.data
        if pos >= len(data):
            raise _err(f"truncated before {what}")
        first = data[pos]
        if first < 0x40:  # one byte: every length and code in a Parallax message but the content's
            self.pos = pos + 1
            return first
        size = 1 << (first >> 6)
        if pos + size > len(data):
            raise _err(f"truncated inside {what}")
        self.pos = pos + size
        return int.from_bytes(data[pos:pos + size], "big") & ((1 << (8 * size - 2)) - 1)

    def take(self, n: int, what: str) -> bytes:
        if n > len(self.data) - self.pos:
            raise _err(f"truncated inside {what} (needs {n} bytes)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def lenbytes(self, what: str) -> bytes:
        return self.take(self.varint(f"{what} length"), what)


def _text(raw: bytes) -> str:
    return raw.decode("latin-1")


_NAME_BYTES = bytes(range(0x21, 0x7F))  # visible ASCII; ':' only as a pseudo-field's first byte


def _field_line(r: _Reader, name: bytes) -> tuple[str, str]:
    if name.translate(None, _NAME_BYTES) or b":" in name[1:]:
        raise _err("field name holds a character HTTP does not allow")
    value = r.lenbytes("field value")
    if b"\x00" in value or b"\n" in value or b"\r" in value:
        raise _err("field value holds NUL, CR or LF")
    return _text(name).lower(), _text(value)


def _known_fields(r: _Reader, what: str) -> Fields:
    section = _Reader(r.lenbytes(what))
    out: list[tuple[str, str]] = []
    while not section.at_end():
        if len(out) >= MAX_FIELDS:
            raise _err(f"more than {MAX_FIELDS} field lines in the {what}")
        name = section.lenbytes("field name")
        if not name:
            raise _err("empty field name")
        out.append(_field_line(section, name))
    return tuple(out)


def _indet_fields(r: _Reader, what: str) -> Fields:
    out: list[tuple[str, str]] = []
    while True:
        name = r.lenbytes(f"{what} field name")
        if not name:
            return tuple(out)
        if len(out) >= MAX_FIELDS:
            raise _err(f"more than {MAX_FIELDS} field lines in the {what}")
        out.append(_field_line(r, name))


def _indet_content(r: _Reader) -> bytes:
    chunks: list[bytes] = []
    while True:
        n = r.varint("content chunk length")
        if n == 0:
            return b"".join(chunks)
        chunks.append(r.take(n, "content chunk"))


def _body(r: _Reader, known: bool) -> tuple[bytes, Fields]:
    """Content and trailers, either of which may be truncated away (RFC 9292 section 3.8)."""
    if r.at_end():
        return b"", ()
    content = r.lenbytes("content") if known else _indet_content(r)
    if r.at_end():
        return content, ()
    trailers = _known_fields(r, "trailer section") if known else _indet_fields(r, "trailer section")
    if r.data.count(0, r.pos) != len(r.data) - r.pos:  # in C: padding is kilobytes, a Python loop was 20 us
        raise _err("non-zero bytes after the message (padding must be zeros)")
    return content, trailers


def _headers(r: _Reader, known: bool) -> Fields:
    if r.at_end():  # truncated after the control data (RFC 9458 Appendix A does this)
        return ()
    fields = _known_fields(r, "header section") if known else _indet_fields(r, "header section")
    seen_regular = False
    for name, _ in fields:
        if name.startswith(":"):
            if seen_regular or name in (":method", ":scheme", ":authority", ":path", ":status"):
                raise _err(f"pseudo-field {name} not allowed here")
        else:
            seen_regular = True
    return fields


def _start(data: bytes, max_bytes: int, kinds: tuple[int, int]) -> tuple[_Reader, bool]:
    if not isinstance(data, (bytes, bytearray)):
        raise _err("not bytes")
    if len(data) > max_bytes:
        raise _err(f"larger than {max_bytes} bytes")
    r = _Reader(bytes(data))
    indicator = r.varint("framing indicator")
    if indicator not in kinds:
        raise _err(f"framing indicator {indicator} is not a {'request' if kinds[0] == 0 else 'response'}")
    return r, indicator == kinds[0]


def decode_request(data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> Request:
    """Decode a known- or indeterminate-length request (``message/bhttp``)."""
    r, known = _start(data, max_bytes, (_KNOWN_REQUEST, _INDET_REQUEST))
    control = [_text(r.lenbytes(w)) for w in ("method", "scheme", "authority", "path")]
    if not control[0] or not all(c.isascii() and c.isprintable() and " " not in c for c in control):
        raise _err("bad request control data")
    headers = _headers(r, known)
    content, trailers = _body(r, known)
    return Request(control[0], control[1], control[2], control[3], headers, content, trailers)


def decode_response(data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> Response:
    """Decode a known- or indeterminate-length response, interim responses included."""
    r, known = _start(data, max_bytes, (_KNOWN_RESPONSE, _INDET_RESPONSE))
    interim: list[tuple[int, Fields]] = []
    while True:
        status = r.varint("status code")
        if not 100 <= status <= 599:
            raise _err(f"status code {status} out of range")
        fields = _headers(r, known)
        if status >= 200:
            break
        if len(interim) >= MAX_FIELDS:
            raise _err("too many interim responses")
        interim.append((status, fields))
    content, trailers = _body(r, known)
    return Response(status, fields, content, trailers, tuple(interim))


def _enc_bytes(raw: bytes) -> bytes:
    return encode_varint(len(raw)) + raw


def _enc_fields(fields: Fields) -> bytes:
    body = b"".join(_enc_bytes(k.lower().encode("latin-1")) + _enc_bytes(v.encode("latin-1")) for k, v in fields)
    return _enc_bytes(body)


def encode_request(req: Request) -> bytes:
    """The known-length encoding of ``req`` (framing indicator 0), without padding."""
    control = b"".join(_enc_bytes(x.encode("latin-1")) for x in (req.method, req.scheme, req.authority, req.path))
    return (encode_varint(_KNOWN_REQUEST) + control + _enc_fields(req.headers)
            + _enc_bytes(req.content) + _enc_fields(req.trailers))


def encode_response(resp: Response) -> bytes:
    """The known-length encoding of ``resp`` (framing indicator 1), without padding."""
    if not 200 <= resp.status <= 599:
        raise ValueError("final status must be 200-599")
    interim = b"".join(encode_varint(s) + _enc_fields(f) for s, f in resp.informational)
    return (encode_varint(_KNOWN_RESPONSE) + interim + encode_varint(resp.status) + _enc_fields(resp.headers)
            + _enc_bytes(resp.content) + _enc_fields(resp.trailers))


# -- padding (RFC 9292 section 3.8) ------------------------------------------------------------

def pad(message: bytes, size: int) -> bytes:
    """``message`` followed by zero bytes up to ``size`` bytes (a decoder skips them).

    Only for a message whose trailer section is encoded (what :func:`encode_request` and
    :func:`encode_response` write), so the zeros cannot be read as content.
    """
    if size < len(message):
        raise ValueError(f"cannot pad {len(message)} bytes to {size}")
    return message + bytes(size - len(message))


def request_padded_size(length: int) -> int:
    """The padded size of a request of ``length`` bytes: the next multiple of :data:`REQUEST_PAD_BYTES`.

    A Parallax request (one target: a host name of at most 253 bytes, a nonce) is
    always under one KiB, so every one a relay sees has the same size.
    """
    return max(1, -(-length // REQUEST_PAD_BYTES)) * REQUEST_PAD_BYTES


def response_bucket(length: int) -> int:
    """The padded size of a response of ``length`` bytes: the next power of two, at least
    :data:`RESPONSE_MIN_BUCKET` (so a relay learns only the bucket, never the exact size)."""
    size = RESPONSE_MIN_BUCKET
    while size < length:
        size *= 2
    return size
