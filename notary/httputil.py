"""Reading HTTP bodies whole, with a size cap (shared by the client, the CLI and the helper).

``StreamReader.read(n)`` returns only what is buffered so far, which over a real
network is part of the body; :func:`read_capped` reads to the end.
"""

from __future__ import annotations

import aiohttp

__all__ = ["read_capped", "BodyTooLarge"]


class BodyTooLarge(ValueError):
    """The body is larger than the cap (a :class:`ValueError`, like other malformed input)."""


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
