"""``parallax helper ...``: install the browser helper, run it, or serve the localhost API.

``install --browser chromium|chrome|firefox [--extension-id ID] [--bundle PATH]``
    write the launcher and the browser's native messaging host manifest.
``uninstall [--browser ...]``
    remove them.
``native``
    run the native messaging host on stdin/stdout (what the launcher runs).
``serve-http [--port 7643] [--allow-origin ORIGIN]``
    the opt-in localhost API (see :mod:`client.helper.httpapi`).
``token``
    print the localhost API token (created on first use).
``extension``
    print where the unpacked extension is and its Chrome-family id.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from notary import eventloop
from client.policy import PRESETS

__all__ = ["add_helper_commands"]


def _cmd_install(args: argparse.Namespace) -> int:
    from client.helper.install import install

    done = install(
        args.browser, extension_ids=args.extension_id or (), bundle=args.bundle,
        user_data_dir=args.user_data_dir, manifest_directory=args.manifest_dir, launcher_dir=args.launcher_dir,
    )
    from client.helper.httpapi import load_or_create_token

    load_or_create_token()  # the per-install token for the opt-in serve-http mode
    print(json.dumps(done.to_json(), indent=2))
    if args.bundle is None:
        from client.bundle import find_bundle_path

        p = find_bundle_path()
        if not p.exists():
            print(f"note: no bundle at {p}; give --bundle or run 'parallax bundle add'", file=sys.stderr)
    return 0


def _cmd_uninstall(args: argparse.Namespace) -> int:
    from client.helper.install import BROWSERS, uninstall

    removed = uninstall(args.browser or BROWSERS, user_data_dir=args.user_data_dir,
                        manifest_directory=args.manifest_dir, launcher_dir=args.launcher_dir)
    for p in removed:
        print(f"removed {p}")
    if not removed:
        print("nothing to remove")
    return 0


def _cmd_native(args: argparse.Namespace) -> int:
    from client.helper.native import main

    return main([])


def _cmd_serve_http(args: argparse.Namespace) -> int:
    from client.helper.httpapi import load_or_create_token, start_http
    from client.helper.install import extension_id
    from client.helper.service import HelperConfig, HelperService

    config = HelperConfig.load(bundle=args.bundle, policy=args.policy)
    token, token_path = load_or_create_token(args.token_file)
    origins = list(args.allow_origin or [])
    if not args.no_default_origin:
        origins.append(f"chrome-extension://{extension_id()}")

    async def run() -> None:
        service = HelperService(config)
        runner, port = await start_http(service, token, port=args.port, origins=origins)
        print(json.dumps({"serving": f"http://127.0.0.1:{port}", "token_file": str(token_path),
                          "token_header": "X-Parallax-Token", "origins": origins}), flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()
            await service.close()

    try:
        eventloop.run(run())
    except KeyboardInterrupt:
        pass
    return 0


def _cmd_token(args: argparse.Namespace) -> int:
    from client.helper.httpapi import load_or_create_token

    token, _ = load_or_create_token(args.token_file)
    print(token)
    return 0


def _cmd_extension(args: argparse.Namespace) -> int:
    from client.helper.install import EXTENSION_DIR, FIREFOX_EXTENSION_ID, extension_id

    print(json.dumps({"path": str(EXTENSION_DIR), "chrome_id": extension_id(), "firefox_id": FIREFOX_EXTENSION_ID}, indent=2))
    return 0


def _where(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--user-data-dir", help="a Chrome-family profile root started with --user-data-dir (manifest goes in DIR/NativeMessagingHosts)")
    g.add_argument("--manifest-dir", help="write/remove the host manifest in this directory instead")
    p.add_argument("--launcher-dir", help="where the launcher script lives (default: the user data dir)")


def add_helper_commands(sub: Any) -> None:
    """Register ``parallax helper`` subcommands."""
    h = sub.add_parser("helper", help="browser helper: native messaging host, install, localhost API")
    hsub = h.add_subparsers(dest="helper_command", required=True, parser_class=type(h))

    p = hsub.add_parser("install", help="install the native messaging host for a browser (per user)")
    p.add_argument("--browser", required=True, choices=["chromium", "chrome", "firefox"], help="the browser to install for")
    p.add_argument("--extension-id", action="append", metavar="ID",
                   help="allow this extension (repeatable; default: the bundled extension's id)")
    p.add_argument("--bundle", help="bundle the host uses (default: $PARALLAX_BUNDLE at run time, then the config dir)")
    _where(p)
    p.set_defaults(func=_cmd_install)

    p = hsub.add_parser("uninstall", help="remove the native messaging host manifest(s) and launcher")
    p.add_argument("--browser", action="append", choices=["chromium", "chrome", "firefox"],
                   help="only this browser (repeatable; default: all)")
    _where(p)
    p.set_defaults(func=_cmd_uninstall)

    p = hsub.add_parser("native", help="run the native messaging host on stdin/stdout (started by the browser)")
    p.set_defaults(func=_cmd_native)

    p = hsub.add_parser("serve-http", help="opt-in localhost API on 127.0.0.1 (token, Host and Origin checks)")
    p.add_argument("--port", type=int, default=7643, help="port on 127.0.0.1 to listen on")
    p.add_argument("--allow-origin", action="append", metavar="ORIGIN", help="allow this browser Origin (repeatable)")
    p.add_argument("--no-default-origin", action="store_true", help="do not allow the bundled extension's origin")
    p.add_argument("--token-file", help="token file (default: <user config dir>/parallax/helper-token)")
    p.add_argument("--bundle", help="bundle file (default: $PARALLAX_BUNDLE, else bundle.json in the user config dir)")
    p.add_argument("--policy", choices=sorted(PRESETS),
                   help="quorum policy, as for 'parallax check' (default: helper.json, else $PARALLAX_POLICY, else mpic)")
    p.set_defaults(func=_cmd_serve_http)

    p = hsub.add_parser("token", help="print the localhost API token (created on first use)")
    p.add_argument("--token-file", help="token file (default: <user config dir>/parallax/helper-token)")
    p.set_defaults(func=_cmd_token)

    p = hsub.add_parser("extension", help="print the unpacked extension's directory and ids")
    p.set_defaults(func=_cmd_extension)
