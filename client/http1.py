"""A small, strict HTTP/1.1 client codec for notary requests (sans-I/O: bytes in, a response out).

Theory of operation
-------------------
The client asks each notary one request at a time per connection (no
pipelining).  :func:`encode_request` builds the request bytes;
:class:`ResponseParser` is fed whatever arrives (:meth:`~ResponseParser.feed`,
then :meth:`~ResponseParser.feed_eof` if the peer closes) and says when the
response is complete (``done``), what it is (``response``) and whether the
connection may carry another request (``keep_alive``).  It never touches a
socket or a clock: :mod:`client.pool` owns connections, timeouts and retries.

What it accepts (anything else is a :class:`HttpProtocolError`, so the notary
counts as unreachable, never half-read):

* a status line ``HTTP/1.1 NNN reason`` or ``HTTP/1.0 NNN reason``; interim
  ``1xx`` responses other than 101 are skipped (RFC 9110 section 15.2);
* a head (status line and fields) of at most ``max_head`` bytes (16 KiB) and
  :data:`MAX_FIELDS` fields, lines ending in CRLF, no obsolete line folding, no
  bare CR or LF and no NUL anywhere in it; at most :data:`MAX_INTERIM` interim
  responses before the final one;
* a body framed by ``Content-Length`` (one value; repeated identical values are
  one), by ``Transfer-Encoding: chunked`` (and nothing else; both together is
  refused, RFC 9112 section 6.3; at most :data:`MAX_CHUNKS` chunks and a trailer
  section of at most ``max_head`` bytes), or, with neither, by the connection closing
  (then the connection is not reused); ``204``/``304`` have no body;
* no ``Content-Encoding`` other than ``identity`` (the client never asks for one);
* a body of at most ``max_body`` bytes, refused as soon as a declared length or
  the bytes received exceed it.

``keep_alive`` is true only for an HTTP/1.1 response without ``Connection:
close`` whose body had explicit framing and that was followed by no stray bytes.

Cost: linear in the bytes fed, however they are cut (the buffer is a
``bytearray`` consumed from the front, and a head or line is searched for
from where the last search stopped).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from notary.errors import RemoteError

__all__ = ["HttpResponse", "HttpProtocolError", "ResponseParser", "encode_request", "MAX_HEAD", "MAX_FIELDS",
           "MAX_CHUNKS", "MAX_INTERIM"]

#: Bytes a response head (status line and header fields) may take.
MAX_HEAD = 16 * 1024
#: Header fields a response may carry.
MAX_FIELDS = 100
#: Chunks a chunked body may be cut into (tiny chunks cost the parser far more than their bytes).
MAX_CHUNKS = 4096
#: Interim (1xx) responses skipped before the final one.
MAX_INTERIM = 8
_MAX_CHUNK_LINE = 1024
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection", b"content-type", b"content-encoding"})
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class HttpProtocolError(RemoteError):
    """The peer's answer is not a well-formed, acceptable HTTP/1.1 response (or is too large)."""


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """One response: ``status``, the media type of ``Content-Type`` (lower case, no parameters;
    ``""`` if none) and the whole ``body``."""

    status: int
    content_type: str
    body: bytes


def encode_request(method: str, authority: str, target: str, body: bytes | None = None,
                   content_type: str | None = None) -> bytes:
    """The bytes of one HTTP/1.1 request: ``method target`` to ``Host: authority``.

    ``body`` (if any) is sent with ``Content-Length``.  No ``Accept-Encoding``
    is sent, so a conforming server answers uncompressed.
    """
    head = f"{method} {target} HTTP/1.1\r\nHost: {authority}\r\n"
    if content_type is not None:
        head += f"Content-Type: {content_type}\r\n"
    if body is not None:
        head += f"Content-Length: {len(body)}\r\n"
    data = (head + "\r\n").encode("ascii")
    return data + body if body is not None else data


class ResponseParser:
    """Parses one HTTP/1.x response from the bytes fed to it (see the module docstring)."""

    __slots__ = ("max_body", "max_head", "_buf", "_scan", "_state", "_status", "_ctype", "_length", "_body",
                 "_size", "_chunks", "_interim", "_trailer", "keep_alive", "received", "response")

    def __init__(self, *, max_body: int, max_head: int = MAX_HEAD) -> None:
        self.max_body = max_body
        self.max_head = max_head
        self._buf = bytearray()
        self._scan = 0  # where the next search for a line or head end starts
        self._chunks = 0
        self._interim = 0
        self._trailer = 0
        self._state = "head"  # head | length | chunk_size | chunk_data | chunk_crlf | trailer | close | done
        self._status = 0
        self._ctype = ""
        self._length = 0
        self._body: list[bytes] = []
        self._size = 0
        #: True once the response is complete and the connection may carry another request.
        self.keep_alive = False
        #: True once any byte arrived (a connection closed before that may be retried).
        self.received = False
        #: The complete response, once ``done``.
        self.response: HttpResponse | None = None

    @property
    def done(self) -> bool:
        return self._state == "done"

    def feed(self, data: bytes) -> None:
        """Take bytes from the connection; raises :class:`HttpProtocolError` on a bad response."""
        if not data:
            return
        self.received = True
        if self._state == "done":
            self.keep_alive = False  # stray bytes after the response: the framing cannot be trusted
            return
        if self._state == "head" and not self._buf and not self._interim and type(data) is bytes:
            # The usual case, a whole response in one piece: parsed from ``data`` as it is.
            end = data.find(b"\r\n\r\n")
            if 0 <= end and end + 4 <= self.max_head:
                self._parse_head(data[:end])
                rest = data[end + 4:]
                if self._state == "length" and len(rest) == self._length:
                    self._add(rest)
                    self._finish(keep_alive=self.keep_alive)
                    return
                if self._state == "done":  # 204/304, or an empty body: anything after it is stray
                    if rest:
                        self.keep_alive = False
                    return
                data = rest
        self._buf += data
        self._run()

    def feed_eof(self) -> None:
        """The peer closed the connection.  Completes a close-delimited body; else raises
        :class:`HttpProtocolError` if the response is incomplete."""
        if self._state == "close":
            self._finish(keep_alive=False)
        elif self._state != "done":
            raise HttpProtocolError("connection closed after an incomplete answer" if self.received
                                    else "connection closed before any answer (nothing arrived)")
        else:
            self.keep_alive = False

    # -- internals -------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            state = self._state
            if state == "head":
                if not self._head():
                    return
            elif state == "length":
                need = self._length - self._size
                self._add(self._take(need))
                if self._size < self._length:
                    return
                self._finish(keep_alive=self.keep_alive)
            elif state == "close":
                self._add(self._take(len(self._buf)))
                return
            elif state == "chunk_size":
                if not self._chunk_size():
                    return
            elif state == "chunk_data":
                take = self._take(self._length)
                self._add(take)
                self._length -= len(take)
                if self._length:
                    return
                self._state = "chunk_crlf"
            elif state == "chunk_crlf":
                if len(self._buf) < 2:
                    return
                if self._buf[:2] != b"\r\n":
                    raise HttpProtocolError("chunk not followed by CRLF")
                del self._buf[:2]
                self._state = "chunk_size"
            elif state == "trailer":
                line = self._line(self.max_head - self._trailer, "trailer section too large")
                if line is None:
                    return
                self._trailer += len(line) + 2
                if self._trailer > self.max_head:
                    raise HttpProtocolError("trailer section too large")
                if not line:
                    self._finish(keep_alive=self.keep_alive)
            else:  # done
                return
            if self._state == "done":
                if self._buf:
                    self.keep_alive = False
                return

    def _take(self, n: int) -> bytes:
        """Up to ``n`` bytes from the front of the buffer (amortised O(n): bytearray front deletes)."""
        take = bytes(self._buf[:n])
        del self._buf[:n]
        self._scan = 0
        return take

    def _line(self, limit: int, too_long: str) -> bytes | None:
        """The next CRLF-terminated line (without it), or None until it is complete; a line
        still unfinished after ``limit`` bytes is an error (``too_long``)."""
        end = self._buf.find(b"\r\n", self._scan)
        if end < 0:
            if len(self._buf) > limit:
                raise HttpProtocolError(too_long)
            self._scan = max(0, len(self._buf) - 1)
            return None
        line = bytes(self._buf[:end])
        del self._buf[:end + 2]
        self._scan = 0
        return line

    def _add(self, data: bytes) -> None:
        if data:
            self._size += len(data)
            if self._size > self.max_body:
                raise HttpProtocolError(f"response body larger than {self.max_body} bytes")
            self._body.append(data)

    def _finish(self, *, keep_alive: bool) -> None:
        self._state = "done"
        self.keep_alive = keep_alive
        self.response = HttpResponse(self._status, self._ctype, b"".join(self._body))
        self._body = []

    def _head(self) -> bool:
        buf = self._buf
        end = buf.find(b"\r\n\r\n", self._scan)
        if end < 0:
            if len(buf) > self.max_head:
                raise HttpProtocolError(f"response head larger than {self.max_head} bytes")
            self._scan = max(0, len(buf) - 3)
            return False
        if end + 4 > self.max_head:
            raise HttpProtocolError(f"response head larger than {self.max_head} bytes")
        head = bytes(buf[:end])
        del buf[:end + 4]
        self._scan = 0
        self._parse_head(head)
        return True

    def _parse_head(self, head: bytes) -> None:
        """Parse a head (without its final CRLF CRLF) and set the state that follows it."""
        status, keep_alive, ctype, framing, length = _head_facts(head)
        if 100 <= status < 200:
            if status == 101:
                raise HttpProtocolError("unexpected protocol switch (101)")
            self._interim += 1
            if self._interim > MAX_INTERIM:
                raise HttpProtocolError(f"more than {MAX_INTERIM} interim responses")
            return  # interim response: the final one follows (state stays "head")
        self._status, self._ctype = status, ctype
        self.keep_alive = keep_alive
        if framing == "none":
            self._finish(keep_alive=self.keep_alive)
        elif framing == "chunked":
            self._state = "chunk_size"
        elif framing == "length":
            self._length = length
            if self._length > self.max_body:
                raise HttpProtocolError(f"response body larger than {self.max_body} bytes")
            self._state = "length"
            if self._length == 0:
                self._finish(keep_alive=self.keep_alive)
        else:
            self.keep_alive = False
            self._state = "close"

    def _chunk_size(self) -> bool:
        line = self._line(_MAX_CHUNK_LINE, "chunk size line too long")
        if line is None:
            return False
        raw = line.split(b";", 1)[0].strip(b" \t")
        if not raw or len(raw) > 15 or not all(c in b"0123456789abcdefABCDEF" for c in raw):
            raise HttpProtocolError("malformed chunk size")
        size = int(raw, 16)
        if size == 0:
            self._state = "trailer"
        else:
            self._chunks += 1
            if self._chunks > MAX_CHUNKS:
                raise HttpProtocolError(f"body cut into more than {MAX_CHUNKS} chunks")
            if self._size + size > self.max_body:
                raise HttpProtocolError(f"response body larger than {self.max_body} bytes")
            self._length = size
            self._state = "chunk_data"
        return True


@functools.lru_cache(maxsize=64)  # pure in the head bytes (<= MAX_HEAD each: <= 1 MiB); a notary's heads repeat
def _head_facts(head: bytes) -> tuple[int, bool, str, str, int]:
    """(status, keep-alive, content type, framing, length) of a response head (without its final
    CRLF CRLF); framing is ``none`` (an interim response, 204 or 304), ``chunked``, ``length`` or
    ``close``.  Raises :class:`HttpProtocolError` for a head the module docstring does not accept."""
    crlf = head.count(b"\r\n")
    if head.count(b"\n") != crlf or head.count(b"\r") != crlf or b"\0" in head:
        raise HttpProtocolError("bare CR, LF or NUL in the response head")
    lines = head.split(b"\r\n")
    status, version = _status_line(lines[0])
    if len(lines) - 1 > MAX_FIELDS:
        raise HttpProtocolError(f"more than {MAX_FIELDS} header fields")
    lengths: set[bytes] = set()
    chunked = close = False
    ctype = ""
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not (name.replace(b"-", b"").isalnum() or (name and _TOKEN.issuperset(name))):
            raise HttpProtocolError("malformed header field")
        name = name.lower()
        if name not in _FRAMING:
            continue
        value = value.strip(b" \t")
        if name == b"content-length":
            lengths.update(v.strip(b" \t") for v in value.split(b","))
        elif name == b"transfer-encoding":
            if value.lower() != b"chunked" or chunked:
                raise HttpProtocolError("unsupported transfer coding")
            chunked = True
        elif name == b"connection":
            close = close or b"close" in [t.strip(b" \t").lower() for t in value.split(b",")]
        elif name == b"content-type":
            ctype = value.split(b";", 1)[0].strip(b" \t").lower().decode("latin-1")
        elif name == b"content-encoding":
            if value.lower() not in (b"", b"identity"):
                raise HttpProtocolError("compressed response (none was asked for)")
    keep_alive = version == b"HTTP/1.1" and not close
    if 100 <= status < 200:
        return status, keep_alive, ctype, "none", 0
    if status in (204, 304):
        if lengths - {b"0"} or chunked:
            raise HttpProtocolError(f"HTTP {status} with a body")
        return status, keep_alive, ctype, "none", 0
    if chunked:
        if lengths:
            raise HttpProtocolError("both Content-Length and Transfer-Encoding")
        return status, keep_alive, ctype, "chunked", 0
    if lengths:
        if len(lengths) != 1:
            raise HttpProtocolError("conflicting Content-Length values")
        raw = next(iter(lengths))
        if not raw.isdigit() or len(raw) > 15:
            raise HttpProtocolError("malformed Content-Length")
        return status, keep_alive, ctype, "length", int(raw)
    return status, keep_alive, ctype, "close", 0


def _status_line(line: bytes) -> tuple[int, bytes]:
    version, _, rest = line.partition(b" ")
    code = rest[:3]
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit() or rest[3:4] not in (b"", b" "):
        raise HttpProtocolError("malformed status line")
    status = int(code)
    if not 100 <= status <= 599:
        raise HttpProtocolError("status code out of range")
    return status, version
