"""Canonical JSON: RFC 8785 (JCS) bytes for every signed payload.

Parallax signs bytes, never objects.  Payloads are restricted to the subset of
JSON on which RFC 8785 is unambiguous and on which every language agrees:
objects with string keys, arrays, strings, booleans, ``null`` and integers in
the I-JSON safe range (|n| <= 2**53 - 1).  Floats are refused outright
(timestamps are integer unix seconds).  Encoding is delegated to the ``rfc8785``
package; decoding is strict (no duplicate keys, no floats, no NaN, bounded size).
"""

from __future__ import annotations

import binascii
import json
import re
from typing import Any, Callable

import rfc8785

from notary.errors import EncodingError

__all__ = ["encode", "decode", "MAX_SAFE_INT"]

MAX_SAFE_INT = 2**53 - 1
_MAX_DEPTH = 32
# Python strings can hold lone UTF-16 surrogates (``json.loads('"\\ud800"')``);
# they have no UTF-8 encoding and I-JSON (RFC 7493) forbids them.
_SURROGATE = re.compile("[\ud800-\udfff]")
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


def _check_str(value: str) -> None:
    if _SURROGATE.search(value):
        raise EncodingError("string contains a lone UTF-16 surrogate")


def _check(value: Any, depth: int = 0) -> bool:
    """Validate ``value``; return True when every object key is in the BMP (see :func:`encode`).

    Hot path (every signature and every request body): exact-type dispatch first.
    """
    if depth > _MAX_DEPTH:
        raise EncodingError("JSON nested too deeply")
    t = type(value)
    if t is str:
        if not value.isascii():
            _check_str(value)
        return True
    if t is int:
        if -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
            return True
        raise EncodingError(f"integer out of the safe range: {value}")
    if value is None or t is bool:
        return True
    if t is dict or isinstance(value, dict):
        bmp = True
        for key, item in value.items():
            if type(key) is not str:
                if not isinstance(key, str):
                    raise EncodingError("object keys must be strings")
            if not key.isascii():
                _check_str(key)
                if _ASTRAL.search(key):
                    bmp = False
            if not _check(item, depth + 1):
                bmp = False
        return bmp
    if t is list or t is tuple or isinstance(value, (list, tuple)):
        bmp = True
        for item in value:
            if not _check(item, depth + 1):
                bmp = False
        return bmp
    if isinstance(value, float):
        raise EncodingError("floats are not allowed in signed JSON")
    if isinstance(value, str):
        _check_str(value)
        return True
    if isinstance(value, int):  # int subclasses (IntEnum); bool handled above
        return _check(int(value), depth)
    raise EncodingError(f"type not allowed in signed JSON: {type(value).__name__}")


def encode(value: Any) -> bytes:
    """Return the RFC 8785 canonical UTF-8 bytes of ``value``.

    Raises :class:`EncodingError` for floats, non-string keys, unsafe integers
    or unsupported types.
    """
    if _check(value):
        # Fast path, byte-identical to RFC 8785 on the validated subset: no floats,
        # safe integers, no lone surrogates, and keys in the BMP, where sorting by
        # code point equals RFC 8785's sort by UTF-16 code unit.  The C encoder's
        # string escaping (\" \\ \b \f \n \r \t, other controls as \u00xx, the
        # rest literal) is RFC 8785's.  tests/test_core.py checks the equality.
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, ValueError, TypeError) as exc:
        raise EncodingError(str(exc)) from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):  # some key came twice: name the first repeated one
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise EncodingError(f"duplicate key in JSON object: {key!r}")
            seen.add(key)
    return out


def _no_float(text: str) -> Any:
    raise EncodingError("floats are not allowed")


def _no_constant(text: str) -> Any:
    raise EncodingError(f"{text} is not JSON")


def _safe_int(text: str) -> int:
    """An integer literal, refused outside the I-JSON safe range (at most 15 digits is always safe)."""
    if len(text) > 15:
        value = int(text) if len(text) <= 17 else MAX_SAFE_INT + 1  # more digits: unsafe, never converted
        if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
            raise EncodingError(f"integer out of the safe range: {text[:20]}")
        return value
    return int(text)


#: One strict decoder for every call (``json.loads`` with hooks builds a new decoder and scanner each time).
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_float=_no_float, parse_int=_safe_int,
                            parse_constant=_no_constant)
_SCAN: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]  # the C scanner


def decode(data: bytes | str, *, max_bytes: int = 1 << 20) -> Any:
    """Parse strict JSON: UTF-8, at most ``max_bytes`` bytes, no duplicate keys, no floats.

    Raises :class:`EncodingError` on any violation.  Does *not* require the
    input to be canonical; use :func:`encode` on the result and compare if needed.
    """
    if isinstance(data, str):
        try:
            data = data.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate in the str itself
            raise EncodingError("string contains a lone UTF-16 surrogate") from None
    if len(data) > max_bytes:
        raise EncodingError(f"JSON document larger than {max_bytes} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise EncodingError("JSON is not valid UTF-8") from None
    try:
        try:  # the C scanner at once (as JSONDecoder.decode does after skipping leading whitespace)
            value, end = _SCAN(text, 0)
        except StopIteration:  # no value at the very start: leading whitespace, or no JSON at all
            end = -1
        if end != len(text):  # whitespace around the value, or not JSON: the whole decoder decides
            value = _DECODER.decode(text)
    except EncodingError:
        raise
    except (ValueError, RecursionError) as exc:
        raise EncodingError(f"malformed JSON: {exc}") from None
    # The decoder refused floats, non-JSON constants, duplicate keys and unsafe integers.  What
    # is left for _check: lone surrogates, which only a \u escape can spell (valid UTF-8 holds
    # none; no backslash, no escape), and nesting deeper than _MAX_DEPTH, which takes more than
    # _MAX_DEPTH brackets.  Text with neither cannot fail it: the walk is skipped (hot path:
    # every answer and every request).
    if "\\" in text or text.count("[") + text.count("{") > _MAX_DEPTH:
        _check(value)
    return value


def b64decode_strict(text: Any) -> bytes:
    """Decode standard, padded base64 and insist it is the *canonical* spelling.

    ``base64.b64decode`` ignores the unused low bits of the last character
    (``"AB=="`` and ``"AA=="`` both decode to ``b"\\x00"``); accepting those would
    make signatures, payloads, keys and pins malleable.  Raises :class:`EncodingError`.
    """
    if not isinstance(text, str):
        raise EncodingError("base64 value is not a string")
    try:  # strict: the alphabet only, padding only at the end (a non-ASCII str is a ValueError)
        raw = binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        raise EncodingError("not valid base64") from None
    if binascii.b2a_base64(raw, newline=False) != text.encode("ascii"):
        raise EncodingError("base64 is not in canonical form")
    return raw
