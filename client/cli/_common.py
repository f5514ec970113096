"""What every ``parallax`` subcommand shares: exit codes, the parser class,
host:port parsing, small file helpers, and the one mapping from the error tree
to exit codes.

Exit codes (documented in the README; sysexits.h numbers for environment errors):

====  ==========================================================
0     success; for ``check``: consistent (with or without outliers)
1     ``check``: mitm_suspected, key_changed or pin_mismatch (alarms)
2     ``check``: split_view, insufficient or unreachable
3     ``check``: intercepted_as_expected (your declared interceptor; not 0 on purpose)
64    usage error (bad flag, bad host or port)
65    bad data (malformed bundle, certificate, JSON; a signed bundle that is
      expired or older than one already accepted)
66    an input file does not exist
69    a remote service is unavailable or answered badly
70    internal error (a bug; reported in one line)
73    cannot create (a key already exists)
74    I/O error
78    configuration error (key file permissions, data dir, wrong passphrase)
130   interrupted (Ctrl-C)
141   standard output closed early (``parallax check ... | head``)
====  ==========================================================
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NoReturn

from client.cli._help import HelpFormatter, add_logging_options
from notary.core import VerifyKey
from notary.errors import (
    ConfigError,
    EncodingError,
    InputError,
    KeyFileError,
    RemoteError,
    StoreError,
    VerificationError,
)

__all__ = [
    "EX_OK", "EX_MITM", "EX_NOT_CONSISTENT", "EX_EXPECTED_INTERCEPTION",
    "EX_USAGE", "EX_DATAERR", "EX_NOINPUT", "EX_UNAVAILABLE", "EX_SOFTWARE", "EX_CANTCREAT", "EX_IOERR",
    "EX_CONFIG", "EX_INTERRUPTED", "EX_PIPE", "Exit", "Parser", "host_port", "exit_code", "read_file", "load_json", "write_or_print",
    "operator_keys", "passphrase", "PASSPHRASE_ENV",
]

EX_OK = 0
EX_MITM = 1
EX_NOT_CONSISTENT = 2
EX_EXPECTED_INTERCEPTION = 3
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_CANTCREAT = 73
EX_IOERR = 74
EX_CONFIG = 78
EX_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it
EX_PIPE = 141  # 128 + SIGPIPE: standard output was closed early


class Exit(Exception):
    """Leave with a one-line message (printed as is) and an exit code."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors leave with :data:`EX_USAGE` and one line.

    Every parser (the top one and each subcommand's) shows option defaults and
    keeps its examples' layout (:class:`~client.cli._help.HelpFormatter`), and
    accepts the logging options, so ``-v``/``--log-level`` work anywhere.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        add_logging_options(self)

    def error(self, message: str) -> NoReturn:
        raise Exit(EX_USAGE, f"{self.prog}: {message} (see --help)")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        """``--help`` and ``--version`` end here: leave through :func:`main`, not SystemExit."""
        if message:
            sys.stderr.write(message)
        raise Exit(status)


def host_port(text: str, default_port: int | None = None) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` for IPv6); *default_port* when the port is absent.

    Raises :class:`argparse.ArgumentTypeError` (so it works as an argparse ``type=``).
    """
    host, sep, port = text.rpartition(":")
    if not sep or (host.count(":") and not host.endswith("]")):
        if default_port is None:
            raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
        host, port = text, str(default_port)
    host = host.strip("[]")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"bad port in {text!r}")
    return host, int(port)


def exit_code(exc: BaseException) -> int:
    """The exit code for an exception of the rooted error tree (70 for anything else: a bug)."""
    if isinstance(exc, KeyFileError) and "already exists" in str(exc):
        return EX_CANTCREAT
    if isinstance(exc, ConfigError):
        return EX_CONFIG
    if isinstance(exc, InputError):
        if exc.code in ("no_bundle", "no_input"):
            return EX_NOINPUT
        if exc.code == "io_error":
            return EX_IOERR
        if exc.code in ("bad_bundle", "bad_certificate", "bad_pin", "bundle_expired", "bundle_rollback"):
            return EX_DATAERR
        return EX_USAGE
    if isinstance(exc, (EncodingError, VerificationError)):
        return EX_DATAERR
    if isinstance(exc, RemoteError):
        return EX_UNAVAILABLE
    if isinstance(exc, StoreError):  # an unreadable or corrupt observation store is not a bug
        return EX_IOERR
    return EX_SOFTWARE


def read_file(path: str) -> bytes:
    """The bytes of *path*; a missing file leaves with :data:`EX_NOINPUT`."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise Exit(EX_NOINPUT, f"parallax: no such file: {path}") from None


def load_json(path: str) -> Any:
    """*path* parsed as JSON; bad JSON leaves with :data:`EX_DATAERR`."""
    try:
        return json.loads(read_file(path))
    except ValueError as exc:
        raise Exit(EX_DATAERR, f"parallax: {path} is not JSON: {exc}") from None


def write_or_print(text: str, out: str | None) -> None:
    """Write *text* to the file *out* (and print its name), or to stdout."""
    if out:
        Path(out).write_text(text)
        print(out)
    else:
        sys.stdout.write(text)


PASSPHRASE_ENV = "PARALLAX_KEY_PASSPHRASE"


def passphrase(*, confirm: bool) -> str:
    """A key passphrase: ``$PARALLAX_KEY_PASSPHRASE``, else asked on the terminal (not echoed).

    ``confirm`` asks twice (for a new key).  With neither an environment variable
    nor a terminal, leaves with :data:`EX_USAGE`.
    """
    import getpass
    import os

    env = os.environ.get(PASSPHRASE_ENV)
    if env is not None:
        return env
    if not sys.stdin.isatty():
        raise Exit(EX_USAGE, f"parallax: a passphrase is needed: set {PASSPHRASE_ENV} or run on a terminal")
    first = getpass.getpass("key passphrase: ")
    if confirm and getpass.getpass("again: ") != first:
        raise Exit(EX_USAGE, "parallax: the passphrases differ")
    return first


def operator_keys(args: argparse.Namespace) -> list[VerifyKey]:
    """The ``--operator-key`` values as verify keys (usage error when not base64 Ed25519)."""
    try:
        return [VerifyKey.from_b64(k) for k in (getattr(args, "operator_key", None) or [])]
    except VerificationError:
        raise InputError("--operator-key takes a base64 Ed25519 public key") from None
