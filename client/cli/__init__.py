"""The ``parallax`` command line: one home for every subcommand.

Notary commands (``keygen``, ``serve``, ``notary-info``) call into :mod:`notary`;
client commands (``check``, ``bundle``, ``cluster``, ``demo``, ``conformance``,
``helper``) into :mod:`client`.  :mod:`notary` never imports this package.
Exit codes are listed in :mod:`client.cli._common` and the README; every error is
one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, NoReturn, Sequence

import notary

from client.cli._check import exit_code_for, render_table
from client.cli._common import (
    EX_CANTCREAT,
    EX_INTERRUPTED,
    EX_PIPE,
    EX_CONFIG,
    EX_DATAERR,
    EX_IOERR,
    EX_NOINPUT,
    EX_SOFTWARE,
    EX_UNAVAILABLE,
    EX_USAGE,
    Exit,
    Parser,
    exit_code,
)
from client.cli._help import attach_examples, setup_logging
from notary import eventloop
from notary.errors import ParallaxError

__all__ = [
    "main", "run_main", "make_parser", "Exit", "exit_code_for", "render_table",
    "EX_USAGE", "EX_DATAERR", "EX_NOINPUT", "EX_UNAVAILABLE", "EX_CANTCREAT", "EX_IOERR", "EX_CONFIG", "EX_SOFTWARE",
    "EX_INTERRUPTED", "EX_PIPE",
]


def make_parser() -> argparse.ArgumentParser:
    """The whole ``parallax`` argument parser."""
    from client.cli._bundle import add_bundle_commands
    from client.cli._check import add_check_command
    from client.cli._local import add_local_commands
    from client.cli._notary import add_notary_commands
    from client.cli._pins import add_pins_commands
    from client.cli._store import add_store_commands
    from client.conformance import add_conformance_command
    from client.helper.cli import add_helper_commands

    parser = Parser(
        prog="parallax",
        description="Parallax: multi-vantage TLS notary network.\nAsks independent notaries which "
                    "certificate key they see for a site, and compares it with the one you see.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {notary.__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND",
                                title="commands")
    add_notary_commands(sub)
    add_store_commands(sub)
    add_check_command(sub)
    add_pins_commands(sub)
    add_bundle_commands(sub)
    add_local_commands(sub)
    add_conformance_command(sub)
    add_helper_commands(sub)
    attach_examples(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point.  Returns (and, as a script, exits with) the exit code."""
    code = _run(argv)
    try:
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    except BrokenPipeError:
        _silence_stdout()
        return EX_PIPE
    return code


def _run(argv: Sequence[str] | None) -> int:
    try:
        args = make_parser().parse_args(argv)
        setup_logging(args, os.environ.get("PARALLAX_LOG"))
        eventloop.chosen()  # a bad PARALLAX_LOOP: a configuration error (78) before any command starts
        func: Callable[[argparse.Namespace], int] = args.func
        return func(args)
    except BrokenPipeError:
        # The reader went away (``parallax check ... | head``): stop quietly, as Unix
        # tools do, and keep Python from complaining when it flushes stdout at exit.
        _silence_stdout()
        return EX_PIPE
    except Exit as e:
        if e.message:
            print(e.message, file=sys.stderr)
        return e.code
    except ParallaxError as exc:
        print(f"parallax: {exc}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        return EX_INTERRUPTED
    except OSError as exc:
        print(f"parallax: {exc.strerror or exc}: {getattr(exc, 'filename', '') or ''}".rstrip(": "), file=sys.stderr)
        return EX_IOERR
    except Exception as exc:  # a bug: still one line
        print(f"parallax: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EX_SOFTWARE


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a real file (tests capture it)
        pass


def run_main() -> NoReturn:
    """Console-script entry: exit with :func:`main`'s code."""
    sys.exit(main())
