"""Help text shared by every ``parallax`` subcommand: the formatter, the logging
options accepted anywhere on the command line, exit codes, policy meanings and
the examples that end each subcommand's ``--help``.

Examples are kept here, keyed by the command path, and attached once the whole
parser is built (:func:`attach_examples`), so each subcommand module only
declares its flags.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

__all__ = [
    "HelpFormatter", "EXIT_CODES", "POLICY_HELP", "LOG_LEVELS", "EXAMPLES",
    "add_logging_options", "setup_logging", "attach_examples", "iter_parsers",
]

#: Exit codes of ``parallax`` (the README's table is checked against this by a test).
EXIT_CODES: tuple[tuple[int, str], ...] = (
    (0, "success; check: consistent or consistent_with_outliers"),
    (1, "check: an alarm: mitm_suspected, key_changed or pin_mismatch"),
    (2, "check: split_view, insufficient or unreachable"),
    (3, "check: intercepted_as_expected (your declared interceptor)"),
    (64, "usage error (bad flag, host, port)"),
    (65, "bad data (malformed bundle, certificate, signature)"),
    (66, "an input file does not exist"),
    (69, "a remote service is unavailable or answered badly"),
    (70, "internal error (a bug), reported in one line"),
    (73, "cannot create (a key already exists)"),
    (74, "I/O error"),
    (78, "configuration error (key file readable by others, bad data dir, wrong passphrase, bad bundle state)"),
    (130, "interrupted (Ctrl-C)"),
    (141, "standard output closed early (e.g. piped into head)"),
)

#: One line per policy preset, for ``--policy`` help.
POLICY_HELP = (
    "mpic: n-1 of n notaries agree for n<=5, n-2 for n>=6, in at least 2 regions (CA/B Forum rule); "
    "consensus: every notary asked agrees; majority: more than half agree; "
    "minority: one agreeing notary is enough (weakest); "
    "perspectives: 75%% of the notaries asked agree (Perspectives); "
    "proxies: for --via SOCKS proxies, with or without notaries: every vantage asked agrees, proxies counted"
)

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description and epilog as written, and shows each option's default.

    Like :class:`argparse.ArgumentDefaultsHelpFormatter`, but a default of None,
    False or an empty list (nothing) is not shown, and help that already says
    "default" is left alone.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default is None or default is False or default == [] or default is argparse.SUPPRESS
            or not (action.option_strings or action.nargs in ("?", "*"))
        ):
            return text
        if isinstance(default, tuple) and len(default) == 2 and isinstance(default[1], int):
            shown = f"{default[0]}:{default[1]}"  # a (host, port) pair
        else:
            shown = "%(default)s"
        return f"{text} (default: {shown})"


def add_logging_options(p: argparse.ArgumentParser) -> None:
    """``-v``/``-q``/``--log-level``/``--log-format``, accepted before or after the subcommand.

    Defaults are SUPPRESS so that a subcommand's parser never overwrites a value
    given before the subcommand.
    """
    g = p.add_argument_group("logging (accepted anywhere on the command line)")
    g.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                   help="more log output (-v info, -vv debug); demo: also print the full observations")
    g.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                   help="only errors (log level error)")
    g.add_argument("--log-level", type=_log_level, default=argparse.SUPPRESS, metavar="LEVEL",
                   help=f"one of {', '.join(LOG_LEVELS)} (default: $PARALLAX_LOG or warning)")
    g.add_argument("--log-format", choices=("text", "json"), default=argparse.SUPPRESS,
                   help="log lines as text or as one JSON object per line, for log collectors (default: text)")


def _log_level(text: str) -> str:
    if text.lower() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"invalid log level {text!r}; choose one of {', '.join(LOG_LEVELS)}")
    return text.lower()


class _JSONFormatter(logging.Formatter):
    """One JSON object per record: time (RFC 3339, UTC), level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def setup_logging(args: argparse.Namespace, env_level: str | None) -> None:
    """Configure the root logger from the logging options (and ``$PARALLAX_LOG``)."""
    level = getattr(args, "log_level", None)
    if level is None:
        verbose = getattr(args, "verbose", 0) or 0
        if getattr(args, "quiet", False):
            level = "error"
        elif verbose:
            level = "info" if verbose == 1 else "debug"
        elif env_level and env_level.lower() in LOG_LEVELS:
            level = env_level.lower()
        else:
            level = "warning"
    handler = logging.StreamHandler(sys.stderr)
    if getattr(args, "log_format", "text") == "json":
        handler.setFormatter(_JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_parallax", False):
            root.removeHandler(h)
    handler._parallax = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))


#: Examples that end each subcommand's --help, keyed by command path.
EXAMPLES: dict[str, str] = {
    "keygen": """\
  parallax keygen --data-dir /var/lib/parallax            # a notary key (raw seed, 0600)
  parallax keygen --encrypt --data-dir ~/parallax-operator   # an operator key, passphrase-protected""",
    "serve": """\
  parallax serve --data-dir /var/lib/parallax --init --name notary-eu --region eu-west \\
      --url https://notary-eu.example.net                   # behind a TLS-terminating proxy
  parallax serve --data-dir /tmp/n1 --init --listen 127.0.0.1:18441 --region test \\
      --allow-network 127.0.0.0/8 --allow-port any --ttl 0   # testing against a local site""",
    "store info": """\
  parallax store info --data-dir /var/lib/parallax       # sizes and counts, as JSON (only reads)""",
    "store compact": """\
  parallax store compact --data-dir /var/lib/parallax --max-age-days 30   # with the notary stopped""",
    "notary-info": """\
  parallax notary-info https://notary-eu.example.net > eu.json
  parallax notary-info --data-dir /var/lib/parallax --public-url https://notary-eu.example.net""",
    "ohttp-rotate": """\
  parallax ohttp-rotate --data-dir /var/lib/parallax""",
    "check": """\
  parallax check https://example.com:8443/login --policy consensus
  parallax check --hosts-file sites.txt --concurrency 8      # many targets, a summary table""",
    "bundle": """\
  parallax bundle merge eu.json us.json ap.json -o bundle.json
  parallax bundle fetch https://example.org/bundle.signed.json --operator-key KEY""",
    "bundle merge": """\
  parallax bundle merge entries/*.json -o bundle.json""",
    "bundle add": """\
  parallax bundle add eu.json                 # into the default bundle
  parallax bundle add eu.json --bundle bundle.json""",
    "bundle show": """\
  parallax bundle show                        # the default bundle
  parallax bundle show bundle.signed.json --operator-key "$(cat operator.pub)\"""",
    "bundle sign": """\
  parallax bundle sign --key-dir ~/parallax-operator --version 7 --valid-for 90 bundle.json -o bundle.signed.json
  PARALLAX_KEY_PASSPHRASE=... parallax bundle sign --key operator.pem --version 8 --expires 2027-01-31 bundle.json""",
    "bundle fetch": """\
  parallax bundle fetch https://example.org/bundle.signed.json --operator-key "$(cat operator.pub)"
  parallax bundle fetch https://example.org/bundle.signed.json --operator-key KEY -o ./bundle.json""",
    "pins": """\
  parallax pins list
  parallax pins pin example.com sha256/...""",
    "pins list": """\
  parallax pins list
  parallax pins list --json""",
    "pins show": """\
  parallax pins show example.com
  parallax pins show example.com:8443 --json""",
    "pins forget": """\
  parallax pins forget example.com          # every port
  parallax pins forget example.com:8443""",
    "pins export": """\
  parallax pins export -o pins-backup.json""",
    "pins pin": """\
  parallax pins pin example.com "$(parallax check example.com --pin)"
  parallax pins pin 192.0.2.10:8443 sha256/... --sni internal.example""",
    "cluster": """\
  parallax cluster --notaries 3 --data-dir /tmp/c     # prints the bundle path; Ctrl-C stops it
  parallax check example.com --bundle /tmp/c/bundle.json""",
    "demo": """\
  parallax demo
  parallax demo --verbose                   # also print the full signed observations""",
    "conformance": """\
  parallax conformance https://notary-eu.example.net --target example.com:443
  parallax conformance http://127.0.0.1:18441 --json""",
    "helper": """\
  parallax helper install --browser firefox
  parallax helper serve-http --port 7643""",
    "helper install": """\
  parallax helper install --browser chromium
  parallax helper install --browser firefox --bundle ~/bundle.json""",
    "helper uninstall": """\
  parallax helper uninstall
  parallax helper uninstall --browser chrome""",
    "helper native": """\
  (started by the browser through the installed host manifest, not by hand)""",
    "helper serve-http": """\
  parallax helper serve-http
  parallax helper serve-http --port 7700 --policy consensus""",
    "helper token": """\
  parallax helper token""",
    "helper extension": """\
  parallax helper extension""",
}


def iter_parsers(parser: argparse.ArgumentParser, path: str = "") -> Any:
    """Yield ``(command path, parser)`` for ``parser`` and every subcommand below it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from iter_parsers(sub, f"{path} {name}".strip())


def attach_examples(parser: argparse.ArgumentParser) -> None:
    """Append each subcommand's examples (and the top parser's exit codes) to its help."""
    for path, p in iter_parsers(parser):
        if not path:
            codes = "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_CODES)
            p.epilog = f"exit codes:\n{codes}\n\n'parallax COMMAND --help' shows each command's options and examples."
        elif path in EXAMPLES:
            p.epilog = "examples:\n" + EXAMPLES[path]
