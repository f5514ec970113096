"""The client's HTTP/1.1 response parser (client.http1): pure, fed exact byte sequences."""

from __future__ import annotations

import pytest

from client.http1 import HttpProtocolError, ResponseParser, encode_request

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: 5\r\n\r\nhello"


def parse(data: bytes, *, pieces: int = 1, max_body: int = 1000, eof: bool = False) -> ResponseParser:
    p = ResponseParser(max_body=max_body)
    step = max(1, -(-len(data) // pieces))
    for i in range(0, len(data), step):
        p.feed(data[i:i + step])
    if eof:
        p.feed_eof()
    return p


@pytest.mark.parametrize("pieces", [1, 2, 7, 1000])
def test_content_length_response_in_any_split(pieces: int) -> None:
    p = parse(OK, pieces=pieces)
    assert p.done and p.keep_alive and p.response is not None
    assert (p.response.status, p.response.content_type, p.response.body) == (200, "application/json", b"hello")


@pytest.mark.parametrize("pieces", [1, 3, 1000])
def test_chunked_response_with_extensions_and_trailers(pieces: int) -> None:
    data = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: y\r\n\r\n")
    p = parse(data, pieces=pieces)
    assert p.done and p.keep_alive and p.response is not None and p.response.body == b"hello world"


def test_incomplete_response_is_not_done_and_eof_is_an_error() -> None:
    p = parse(OK[:-2])
    assert not p.done
    with pytest.raises(HttpProtocolError, match="incomplete"):
        p.feed_eof()


def test_eof_before_any_byte_says_nothing_arrived() -> None:
    p = ResponseParser(max_body=10)
    with pytest.raises(HttpProtocolError, match="nothing"):
        p.feed_eof()
    assert not p.received


def test_close_delimited_body_ends_at_eof_and_is_not_kept_alive() -> None:
    p = parse(b"HTTP/1.1 200 OK\r\n\r\nabc", eof=False)
    assert not p.done
    p.feed(b"def")
    p.feed_eof()
    assert p.done and not p.keep_alive and p.response is not None and p.response.body == b"abcdef"


@pytest.mark.parametrize("data, why", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1001\r\n\r\n", "larger than 1000"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e9\r\n" + b"x" * 1001, "larger than 1000"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n200\r\n" + b"x" * 512 + b"\r\n200\r\n", "larger than 1000"),
    (b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 1001, "larger than 1000"),
    (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 20000, "head larger"),
    (b"HTTP/2 200 OK\r\n\r\n", "status line"),
    (b"ICY 200 OK\r\n\r\n", "status line"),
    (b"HTTP/1.1 20 OK\r\n\r\n", "status line"),
    (b"HTTP/1.1 999 Nope\r\n\r\n", "out of range"),
    (b"HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n", "malformed header"),
    (b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n", "malformed header"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", "conflicting"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n", "malformed Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", "both"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "transfer coding"),
    (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 1\r\n\r\nx", "compressed"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxyz", "CRLF"),
    (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "101"),
    (b"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\nabc", "with a body"),
])
def test_malformed_or_oversized_responses_are_refused(data: bytes, why: str) -> None:
    with pytest.raises(HttpProtocolError, match=why):
        parse(data)


def test_repeated_identical_content_length_is_one() -> None:
    p = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\nhello")
    assert p.done and p.response is not None and p.response.body == b"hello"


def test_interim_responses_are_skipped() -> None:
    p = parse(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n" + OK, pieces=5)
    assert p.done and p.response is not None and p.response.status == 200 and p.response.body == b"hello"


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    OK + b"HTTP/1.1 200 OK\r\n",  # stray bytes after the response
])
def test_connection_not_reusable(data: bytes) -> None:
    p = parse(data)
    assert p.done and not p.keep_alive


def test_redirect_is_a_response_like_any_other() -> None:
    p = parse(b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/\r\nContent-Length: 0\r\n\r\n")
    assert p.done and p.response is not None and p.response.status == 302 and p.response.body == b""


def test_no_body_statuses() -> None:
    p = parse(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert p.done and p.keep_alive and p.response is not None and p.response.body == b""


def test_encode_request() -> None:
    assert encode_request("POST", "127.0.0.1:8080", "/v1/observe", b"{}", "application/json") == (
        b"POST /v1/observe HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\n\r\n{}")
    assert encode_request("GET", "n.example", "/v1/notary") == b"GET /v1/notary HTTP/1.1\r\nHost: n.example\r\n\r\n"


@pytest.mark.parametrize("data, body, keep_alive", [
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n" + OK, b"hello", True),
    (OK + b"x", b"hello", False),  # one stray byte after the body
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP", b"", False),
    (b"HTTP/1.1 204 No Content\r\n\r\nx", b"", False),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", b"hello", True),
])
def test_whole_response_in_one_piece(data: bytes, body: bytes, keep_alive: bool) -> None:
    """A response that arrives in one read (the usual case) is framed exactly as one cut in pieces."""
    for pieces in (1, 3):
        p = parse(data, pieces=pieces)
        assert p.done and p.response is not None and p.response.body == body
        assert p.keep_alive is keep_alive


def test_body_completed_by_a_later_piece() -> None:
    p = ResponseParser(max_body=1000)
    p.feed(OK[:-3])
    assert not p.done
    p.feed(OK[-3:])
    assert p.done and p.keep_alive and p.response is not None and p.response.body == b"hello"


def test_a_head_seen_before_is_judged_again_against_this_parser() -> None:
    """Parsed heads are remembered by their bytes (a notary's repeat): the body limit, the
    interim-response count and refusals still apply per parser, every time."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: 500\r\n\r\n"
    for _ in range(2):
        p = parse(head + b"x" * 500, max_body=1000)
        assert p.done and p.response is not None and p.response.content_type == "application/json"
        with pytest.raises(HttpProtocolError, match="larger than"):
            parse(head + b"x" * 500, max_body=499)
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    for _ in range(2):
        with pytest.raises(HttpProtocolError, match="interim"):
            parse(interim * 9 + head)
        assert parse(interim * 8 + head + b"x" * 500).done
    bad = b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n"
    for _ in range(2):
        with pytest.raises(HttpProtocolError, match="conflicting"):
            parse(bad)
