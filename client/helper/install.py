"""Installing the native messaging host for a browser: a launcher script and a host manifest.

The browser starts the host named :data:`HOST_NAME` from the manifest's
``path``, which must be an absolute executable; ``install`` writes a small
``/bin/sh`` launcher that execs this Python with ``-m client.helper.native``
(carrying ``PARALLAX_BUNDLE`` when ``--bundle`` is given) and points the
manifest at it.

Per-user manifest locations:

=========  =================================================================  ==========================================
browser    Linux                                                              macOS
=========  =================================================================  ==========================================
chromium   ``$XDG_CONFIG_HOME/chromium/NativeMessagingHosts``                 ``~/Library/Application Support/Chromium/NativeMessagingHosts``
chrome     ``$XDG_CONFIG_HOME/google-chrome/NativeMessagingHosts``            ``~/Library/Application Support/Google/Chrome/NativeMessagingHosts``
firefox    ``~/.mozilla/native-messaging-hosts``                              ``~/Library/Application Support/Mozilla/NativeMessagingHosts``
=========  =================================================================  ==========================================

For a Chrome-family browser started with ``--user-data-dir=DIR`` the manifest
goes in ``DIR/NativeMessagingHosts`` (``--user-data-dir``).  Windows needs a
registry key per host and is not supported by this installer.

Chrome-family manifests list ``allowed_origins`` (``chrome-extension://ID/``;
the default ID is the one fixed by the ``key`` in the bundled extension's
manifest); Firefox manifests list ``allowed_extensions`` (the gecko id).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shlex
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import platformdirs

from notary.errors import ConfigError, InputError

__all__ = [
    "HOST_NAME", "BROWSERS", "FIREFOX_EXTENSION_ID", "EXTENSION_DIR", "extension_id", "id_from_key",
    "manifest_dir", "host_manifest", "launcher_text", "install", "uninstall", "Installed", "default_launcher_dir",
]

HOST_NAME = "org.parallax.helper"
BROWSERS = ("chromium", "chrome", "firefox")
EXTENSION_DIR = Path(__file__).resolve().parent / "extension"
LAUNCHER_NAME = "parallax-native-host"
_ID_RE_CHARS = set("abcdefghijklmnop")


def id_from_key(key_b64: str) -> str:
    """A Chrome extension id from a manifest ``key``: sha256 of the DER SPKI, first 32 hex digits mapped 0-f -> a-p."""
    digest = hashlib.sha256(base64.b64decode(key_b64)).hexdigest()[:32]
    return "".join(chr(ord("a") + int(c, 16)) for c in digest)


def _extension_manifest() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((EXTENSION_DIR / "manifest.json").read_text())
    return doc


def extension_id() -> str:
    """The Chrome-family id of the bundled extension (fixed by its manifest ``key``)."""
    return id_from_key(_extension_manifest()["key"])


def _firefox_id() -> str:
    return str(_extension_manifest()["browser_specific_settings"]["gecko"]["id"])


FIREFOX_EXTENSION_ID = "parallax-helper@parallax.invalid"


def default_launcher_dir() -> Path:
    return Path(platformdirs.user_data_dir("parallax")) / "native-host"


def manifest_dir(
    browser: str,
    *,
    user_data_dir: str | os.PathLike[str] | None = None,
    platform: str = sys.platform,
    home: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Path:
    """Where ``browser`` looks for per-user native messaging host manifests."""
    if browser not in BROWSERS:
        raise InputError(f"unknown browser {browser!r}; choose one of {', '.join(BROWSERS)}")
    env = os.environ if env is None else env
    home = home or Path(env.get("HOME") or Path.home())
    if user_data_dir is not None:
        if browser == "firefox":
            raise InputError("--user-data-dir is for Chrome-family browsers; Firefox reads one per-user directory")
        return Path(user_data_dir) / "NativeMessagingHosts"
    if platform == "darwin":
        sub = {"chromium": "Chromium", "chrome": "Google/Chrome", "firefox": "Mozilla"}[browser]
        return home / "Library" / "Application Support" / sub / "NativeMessagingHosts"
    if platform.startswith("win"):
        raise ConfigError("on Windows the host is registered in the registry; this installer supports Linux and macOS")
    if browser == "firefox":
        return home / ".mozilla" / "native-messaging-hosts"
    config = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
    return config / ("chromium" if browser == "chromium" else "google-chrome") / "NativeMessagingHosts"


def host_manifest(browser: str, launcher: Path, extension_ids: Sequence[str]) -> dict[str, Any]:
    """The host manifest JSON for ``browser``."""
    doc: dict[str, Any] = {
        "name": HOST_NAME,
        "description": "Parallax TLS notary helper: asks notaries whether they see the key your browser sees",
        "path": str(launcher),
        "type": "stdio",
    }
    if browser == "firefox":
        doc["allowed_extensions"] = list(extension_ids)
    else:
        for i in extension_ids:
            if len(i) != 32 or set(i) - _ID_RE_CHARS:
                raise InputError(f"{i!r} is not a Chrome extension id (32 letters a-p)")
        doc["allowed_origins"] = [f"chrome-extension://{i}/" for i in extension_ids]
    return doc


def launcher_text(python: str, bundle: str | None = None, extra_env: Mapping[str, str] | None = None) -> str:
    """A /bin/sh launcher that execs ``python -m client.helper.native``."""
    pkg_root = str(Path(__file__).resolve().parents[2])
    lines = [
        "#!/bin/sh",
        "# Parallax native messaging host launcher, written by 'parallax helper install'.",
        "# The browser runs this; stdout carries native messaging frames only.",
    ]
    env = dict(extra_env or {})
    if bundle:
        env["PARALLAX_BUNDLE"] = bundle
    for k, v in sorted(env.items()):
        lines.append(f"{k}={shlex.quote(v)}")
        lines.append(f"export {k}")
    lines.append(f"PYTHONPATH={shlex.quote(pkg_root)}${{PYTHONPATH:+:$PYTHONPATH}}")
    lines.append("export PYTHONPATH")
    lines.append(f'exec {shlex.quote(python)} -m client.helper.native "$@"')
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Installed:
    browser: str
    manifest: Path
    launcher: Path
    allowed: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"browser": self.browser, "host": HOST_NAME, "manifest": str(self.manifest),
                "launcher": str(self.launcher), "allowed": list(self.allowed)}


def _write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def install(
    browser: str,
    *,
    extension_ids: Sequence[str] = (),
    bundle: str | os.PathLike[str] | None = None,
    user_data_dir: str | os.PathLike[str] | None = None,
    manifest_directory: str | os.PathLike[str] | None = None,
    launcher_dir: str | os.PathLike[str] | None = None,
    python: str | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> Installed:
    """Write the launcher and ``browser``'s host manifest.  Returns what was written."""
    if browser not in BROWSERS:
        raise InputError(f"unknown browser {browser!r}; choose one of {', '.join(BROWSERS)}")
    ids = tuple(extension_ids) or ((_firefox_id(),) if browser == "firefox" else (extension_id(),))
    mdir = Path(manifest_directory) if manifest_directory else manifest_dir(browser, user_data_dir=user_data_dir)
    ldir = Path(launcher_dir) if launcher_dir else default_launcher_dir()
    launcher = (ldir / LAUNCHER_NAME).absolute()
    bundle_path = str(Path(bundle).absolute()) if bundle else None
    py = python or sys.executable
    if not py or not os.path.isabs(py):
        raise ConfigError("cannot find the absolute path of this Python interpreter")
    manifest = host_manifest(browser, launcher, ids)
    _write(launcher, launcher_text(py, bundle_path, extra_env), stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    target = mdir / f"{HOST_NAME}.json"
    _write(target, json.dumps(manifest, indent=2) + "\n", 0o644)
    return Installed(browser, target, launcher, ids)


def uninstall(
    browsers: Sequence[str] = BROWSERS,
    *,
    user_data_dir: str | os.PathLike[str] | None = None,
    manifest_directory: str | os.PathLike[str] | None = None,
    launcher_dir: str | os.PathLike[str] | None = None,
) -> list[Path]:
    """Remove the host manifest(s) and the launcher.  Returns the paths removed."""
    removed: list[Path] = []
    for b in browsers:
        if manifest_directory:
            mdir = Path(manifest_directory)
        elif user_data_dir is not None and b == "firefox":
            continue
        else:
            try:
                mdir = manifest_dir(b, user_data_dir=user_data_dir)
            except ConfigError:
                continue
        p = mdir / f"{HOST_NAME}.json"
        if p.exists():
            p.unlink()
            removed.append(p)
    launcher = ((Path(launcher_dir) if launcher_dir else default_launcher_dir()) / LAUNCHER_NAME).absolute()
    if launcher.exists() and not _still_used(launcher, user_data_dir, manifest_directory):
        launcher.unlink()
        removed.append(launcher)
        if not any(launcher.parent.iterdir()):
            launcher.parent.rmdir()
    return removed


def _still_used(launcher: Path, user_data_dir: object, manifest_directory: object) -> bool:
    """True if a remaining host manifest (in the places uninstall knows) still points at ``launcher``."""
    dirs = [Path(str(manifest_directory))] if manifest_directory else []
    if user_data_dir is not None:
        dirs.append(Path(str(user_data_dir)) / "NativeMessagingHosts")
    for b in BROWSERS:
        try:
            dirs.append(manifest_dir(b))
        except (ConfigError, InputError):
            pass
    for d in dirs:
        try:
            doc = json.loads((d / f"{HOST_NAME}.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and doc.get("path") == str(launcher):
            return True
    return False
