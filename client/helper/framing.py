"""Native messaging framing: a 4-byte native-endian length, then that many bytes of UTF-8 JSON.

Chromium and Firefox speak this on the host's stdin/stdout.  The browser
refuses host-to-browser frames above 1 MiB (:data:`MAX_OUT`); requests are
small, so frames from the browser are capped at :data:`MAX_IN` too.  An
oversized inbound frame is skipped in bounded chunks (the stream stays in
step) and reported; nothing here ever holds more than ``max_size`` bytes.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

__all__ = [
    "MAX_IN", "MAX_OUT", "FrameError", "FrameTooLarge", "TruncatedFrame", "BadMessage",
    "encode_frame", "decode_message", "read_frame",
]

MAX_IN = 1 << 20
MAX_OUT = 1 << 20
HEADER = 4
_DISCARD_CHUNK = 1 << 16


class FrameError(Exception):
    """A frame could not be read or written.  ``code`` goes into the error frame."""

    code = "bad_frame"


class FrameTooLarge(FrameError):
    code = "frame_too_large"

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the {limit}-byte limit")
        self.size = size
        self.limit = limit


class TruncatedFrame(FrameError):
    """The stream ended inside a frame (the peer went away)."""

    code = "truncated_frame"


class BadMessage(FrameError):
    """The frame is not a UTF-8 JSON object."""

    code = "bad_json"


def encode_frame(obj: Any, max_size: int = MAX_OUT) -> bytes:
    """Length-prefixed UTF-8 JSON.  Raises :class:`FrameTooLarge` above ``max_size`` payload bytes."""
    payload = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(payload) > max_size:
        raise FrameTooLarge(len(payload), max_size)
    return len(payload).to_bytes(HEADER, sys.byteorder) + payload


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_message(payload: bytes) -> dict[str, Any]:
    """Parse a frame's payload: a JSON object.  Raises :class:`BadMessage`."""
    try:
        obj = json.loads(payload.decode("utf-8"), parse_constant=_no_constants)
    except UnicodeDecodeError:
        raise BadMessage("frame is not valid UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise BadMessage(f"frame is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise BadMessage("a message must be a JSON object")
    return obj


async def read_frame(reader: asyncio.StreamReader, max_size: int = MAX_IN) -> bytes | None:
    """One frame's payload; ``None`` at a clean end of stream (between frames).

    Raises :class:`FrameTooLarge` after skipping an oversized frame (the next
    call reads the frame after it) and :class:`TruncatedFrame` when the stream
    ends inside a frame.
    """
    try:
        header = await reader.readexactly(HEADER)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise TruncatedFrame(f"stream ended after {len(exc.partial)} of {HEADER} header bytes") from None
        return None
    size = int.from_bytes(header, sys.byteorder)
    if size > max_size:
        left = size
        while left:
            chunk = await reader.read(min(left, _DISCARD_CHUNK))
            if not chunk:
                raise TruncatedFrame(f"stream ended inside an oversized frame of {size} bytes")
            left -= len(chunk)
        raise FrameTooLarge(size, max_size)
    try:
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError as exc:
        raise TruncatedFrame(f"stream ended after {len(exc.partial)} of {size} bytes") from None
