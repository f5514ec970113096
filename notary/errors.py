"""The one rooted error tree of Parallax.

Every exception that the public API of :mod:`notary` or :mod:`client` raises is a
:class:`ParallaxError`.  Library exceptions (``ssl``, ``aiohttp``, ``nacl``,
``sqlite3``) are translated at the I/O edges; none escapes the public API.

A failed probe is *not* an exception: it is an observation with an error status.
"""

from __future__ import annotations

__all__ = [
    "ParallaxError",
    "ConfigError",
    "DataDirLocked",
    "KeyFileError",
    "InputError",
    "OhttpError",
    "EncodingError",
    "VerificationError",
    "SignatureError",
    "RemoteError",
    "StoreError",
    "BusyError",
]


class ParallaxError(Exception):
    """Root of every error Parallax raises."""


class ConfigError(ParallaxError):
    """The operator's configuration is unusable (bad flag, missing data dir)."""


class DataDirLocked(ConfigError):
    """Another process (a running ``parallax serve``) holds the data directory's lock."""


class KeyFileError(ConfigError):
    """A key file is missing, malformed, readable by others, or would be overwritten."""


class InputError(ParallaxError):
    """A caller's input is invalid (hostname, port, nonce, request body).

    Servers answer it with HTTP 400 and ``{"error": code, "reason": str(exc)}``.
    """

    def __init__(self, reason: str, code: str = "bad_request") -> None:
        super().__init__(reason)
        self.code = code


class OhttpError(InputError):
    """A Binary HTTP or Oblivious HTTP message is malformed, truncated, tampered with,
    names an unknown key, or does not decrypt (RFC 9292, RFC 9458).

    A gateway answers it with HTTP 400 (RFC 9458 section 5.2), never a 500; a
    client treats it as an unusable answer from that notary.
    """

    def __init__(self, reason: str, code: str = "bad_ohttp") -> None:
        super().__init__(reason, code)


class EncodingError(ParallaxError):
    """Bytes are not canonical JSON of the allowed shape (floats, duplicate keys, size)."""


class VerificationError(ParallaxError):
    """A signature, payload type, nonce, target or timestamp check failed."""


class SignatureError(VerificationError):
    """Authenticity failed: a signature, or a Merkle inclusion path to a signed root, does not verify."""


class RemoteError(ParallaxError):
    """A remote peer (a notary, a bundle URL) answered something unusable."""


class StoreError(ParallaxError):
    """The observation store failed (disk full, corrupt database)."""


class BusyError(ParallaxError):
    """No probe slot could be had before the request's deadline (the answer is a ``busy`` observation)."""
