"""Reading HTTP bodies whole, with a size cap and a deadline (shared by the notary, the client, the CLI
and the helper).

``StreamReader.read(n)`` returns only what is buffered so far, which over a real
network is part of the body; :func:`read_capped` reads to the end.
:func:`read_request_body` is how every notary route that takes a body reads it
(``/v1/observe``, the Oblivious HTTP gateway, the relay): at most ``limit``
bytes within ``timeout`` seconds, else a 400 ``body_timeout``; a client that
disconnects mid-body is :class:`ClientGone`, which the server's error
middleware answers quietly (no traceback in the log).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import aiohttp

from notary.errors import InputError

if TYPE_CHECKING:  # the client imports this module too: aiohttp.web only when a server reads a body
    from aiohttp import web

__all__ = ["read_capped", "read_request_body", "BodyTooLarge", "ClientGone"]


class BodyTooLarge(ValueError):
    """The body is larger than the cap (a :class:`ValueError`, like other malformed input)."""


class ClientGone(ConnectionResetError):
    """The client closed the connection before its request body was complete."""


async def read_capped(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """Read ``stream`` to EOF; raise :class:`BodyTooLarge` as soon as it exceeds ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in stream.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_request_body(request: "web.BaseRequest", *, limit: int, timeout: float) -> bytes:
    """The whole body of ``request``: at most ``limit`` bytes, received within ``timeout`` seconds.

    Raises :class:`BodyTooLarge` (a declared or actual size over ``limit``),
    :class:`~notary.errors.InputError` ``body_timeout`` (a slow sender) or
    ``bad_encoding`` (a body that does not decode under its Content-Encoding),
    and :class:`ClientGone` (the client disconnected mid-body).
    """
    from aiohttp.web import RequestPayloadError

    if not request.content.is_eof() and request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(f"body larger than {limit} bytes")  # (a body already received is measured below)
    try:
        if request.content.is_eof():
            # The whole body arrived with the head (the common case): reading it cannot
            # wait, so no deadline (and no timer) is needed.
            raw = await request.read()
        else:
            async with asyncio.timeout(timeout):
                # request.read(), not the stream: it honours the application's client_max_size
                # (413) and returns a body already set on the request (the gateway's inner request).
                raw = await request.read()
    except TimeoutError:
        raise InputError(f"request body not received within {timeout:g}s", "body_timeout") from None
    except (aiohttp.http_exceptions.HttpProcessingError, RequestPayloadError):
        # Mark the body finished so that aiohttp does not read (and log) the same error again.
        request.content.feed_eof()
        raise InputError("request body does not match its Content-Encoding", "bad_encoding") from None
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        raise ClientGone("the client disconnected before the request body was complete") from None
    if len(raw) > limit:
        raise BodyTooLarge(f"body larger than {limit} bytes")
    return raw
