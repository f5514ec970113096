"""``parallax helper install/uninstall``: manifests in the right places, a launcher the browser can run."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from client.helper.install import (
    EXTENSION_DIR, FIREFOX_EXTENSION_ID, HOST_NAME, extension_id, id_from_key, install, manifest_dir, uninstall,
)
from client.cli import main
from notary.errors import ConfigError, InputError


def frame(obj: object) -> bytes:
    b = json.dumps(obj).encode()
    return len(b).to_bytes(4, sys.byteorder) + b


def test_manifest_locations_linux_and_macos(tmp_path: Path) -> None:
    home = tmp_path
    env = {"HOME": str(home)}
    assert manifest_dir("chromium", platform="linux", home=home, env=env) == home / ".config/chromium/NativeMessagingHosts"
    assert manifest_dir("chrome", platform="linux", home=home, env=env) == home / ".config/google-chrome/NativeMessagingHosts"
    assert manifest_dir("firefox", platform="linux", home=home, env=env) == home / ".mozilla/native-messaging-hosts"
    xdg = {"HOME": str(home), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    assert manifest_dir("chrome", platform="linux", home=home, env=xdg) == tmp_path / "xdg/google-chrome/NativeMessagingHosts"
    mac = home / "Library/Application Support"
    assert manifest_dir("chrome", platform="darwin", home=home, env=env) == mac / "Google/Chrome/NativeMessagingHosts"
    assert manifest_dir("chromium", platform="darwin", home=home, env=env) == mac / "Chromium/NativeMessagingHosts"
    assert manifest_dir("firefox", platform="darwin", home=home, env=env) == mac / "Mozilla/NativeMessagingHosts"
    assert manifest_dir("chromium", user_data_dir=tmp_path / "p") == tmp_path / "p/NativeMessagingHosts"
    with pytest.raises(ConfigError):
        manifest_dir("chrome", platform="win32", home=home, env=env)
    with pytest.raises(InputError):
        manifest_dir("safari")
    with pytest.raises(InputError):
        manifest_dir("firefox", user_data_dir=tmp_path)


def test_chromium_install_into_a_profile(tmp_path: Path) -> None:
    bundle = tmp_path / "my bundle's.json"
    done = install("chromium", user_data_dir=tmp_path / "profile", bundle=bundle, launcher_dir=tmp_path / "bin")
    assert done.manifest == tmp_path / "profile/NativeMessagingHosts" / f"{HOST_NAME}.json"
    doc = json.loads(done.manifest.read_text())
    assert doc == {
        "name": HOST_NAME, "description": doc["description"], "path": str(done.launcher), "type": "stdio",
        "allowed_origins": [f"chrome-extension://{extension_id()}/"],
    }
    assert os.path.isabs(doc["path"]) and os.access(doc["path"], os.X_OK)
    text = done.launcher.read_text()
    assert text.startswith("#!/bin/sh\n") and "-m client.helper.native" in text and sys.executable in text
    assert "PARALLAX_BUNDLE=" in text


def test_firefox_install_uses_allowed_extensions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    done = install("firefox", launcher_dir=tmp_path / "bin")
    assert done.manifest == tmp_path / ".mozilla/native-messaging-hosts" / f"{HOST_NAME}.json"
    doc = json.loads(done.manifest.read_text())
    assert doc["allowed_extensions"] == [FIREFOX_EXTENSION_ID] and "allowed_origins" not in doc
    assert "PARALLAX_BUNDLE" not in done.launcher.read_text()


def test_chrome_install_with_explicit_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    ids = ["a" * 32, "p" * 32]
    done = install("chrome", extension_ids=ids, launcher_dir=tmp_path / "bin")
    assert done.manifest.parent == tmp_path / "cfg/google-chrome/NativeMessagingHosts"
    assert json.loads(done.manifest.read_text())["allowed_origins"] == [f"chrome-extension://{i}/" for i in ids]
    with pytest.raises(InputError):
        install("chrome", extension_ids=["not-an-id"], launcher_dir=tmp_path / "bin")


def test_the_launcher_runs_the_host_with_the_bundle(tmp_path: Path) -> None:
    bundle = tmp_path / "b.json"
    bundle.write_text(json.dumps({"version": 1, "notaries": []}))
    done = install("chromium", user_data_dir=tmp_path / "p", bundle=bundle, launcher_dir=tmp_path / "bin")
    env = {k: v for k, v in os.environ.items() if k not in ("PARALLAX_BUNDLE", "PYTHONPATH")}
    env["PARALLAX_HELPER_CONFIG"] = str(tmp_path / "none.json")
    # As Chromium runs it: the path from the manifest, the caller's origin as the argument, another cwd.
    proc = subprocess.run([json.loads(done.manifest.read_text())["path"], f"chrome-extension://{extension_id()}/"],
                          input=frame({"type": "ping", "id": 1}), capture_output=True, env=env, cwd="/", timeout=30)
    assert proc.returncode == 0, proc.stderr.decode()
    n = int.from_bytes(proc.stdout[:4], sys.byteorder)
    pong = json.loads(proc.stdout[4:4 + n])
    assert len(proc.stdout) == 4 + n
    assert pong["type"] == "pong" and pong["bundle"] == {"path": str(bundle), "notaries": 0, "signed_by": None}


def test_uninstall_removes_manifests_and_the_launcher_when_unused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".config"))
    bindir = tmp_path / "bin"
    a = install("chromium", launcher_dir=bindir)
    b = install("firefox", launcher_dir=bindir)
    assert uninstall(["firefox"], launcher_dir=bindir) == [b.manifest]
    assert a.launcher.exists()  # still used by the chromium manifest
    assert uninstall(launcher_dir=bindir) == [a.manifest, a.launcher]
    assert not bindir.exists()
    assert uninstall(launcher_dir=bindir) == []


def test_cli_install_and_uninstall(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setenv("PARALLAX_BUNDLE", str(tmp_path / "b.json"))
    profile, bindir = tmp_path / "profile", tmp_path / "bin"
    assert main(["helper", "install", "--browser", "chromium", "--user-data-dir", str(profile),
                 "--launcher-dir", str(bindir), "--extension-id", "b" * 32]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["allowed"] == ["b" * 32] and Path(out["manifest"]).exists()
    assert (tmp_path / "cfg/parallax/helper-token").exists()  # the per-install token for serve-http
    assert main(["helper", "install", "--browser", "chromium", "--extension-id", "xyz", "--user-data-dir", str(profile)]) == 64
    assert main(["helper", "install", "--browser", "opera"]) == 64
    capsys.readouterr()
    assert main(["helper", "uninstall", "--user-data-dir", str(profile), "--launcher-dir", str(bindir)]) == 0
    assert "removed" in capsys.readouterr().out
    assert not Path(out["manifest"]).exists() and not Path(out["launcher"]).exists()
    assert main(["helper", "token"]) == 0
    assert capsys.readouterr().out.strip() == (tmp_path / "cfg/parallax/helper-token").read_text().strip()
    assert main(["helper", "extension"]) == 0
    assert json.loads(capsys.readouterr().out)["chrome_id"] == extension_id()


# -- the extension package ----------------------------------------------------------------

def test_extension_id_is_fixed_by_the_manifest_key() -> None:
    manifest = json.loads((EXTENSION_DIR / "manifest.json").read_text())
    der = base64.b64decode(manifest["key"])
    want = "".join("abcdefghijklmnop"[int(c, 16)] for c in hashlib.sha256(der).hexdigest()[:32])
    assert extension_id() == id_from_key(manifest["key"]) == want == "ingiepccbcbldikhoammkmlaakcifpma"
    assert manifest["browser_specific_settings"]["gecko"]["id"] == FIREFOX_EXTENSION_ID


def test_extension_manifest_is_mv3_and_complete() -> None:
    m = json.loads((EXTENSION_DIR / "manifest.json").read_text())
    assert m["manifest_version"] == 3
    assert {"nativeMessaging", "webRequest", "webRequestBlocking", "storage"} <= set(m["permissions"])
    files = [m["background"]["service_worker"], *m["background"]["scripts"], m["action"]["default_popup"],
             m["options_ui"]["page"], *m["icons"].values(), *m["action"]["default_icon"].values(),
             *(r for w in m["web_accessible_resources"] for r in w["resources"])]
    for f in files:
        assert (EXTENSION_DIR / f).is_file(), f
    for page in EXTENSION_DIR.glob("*.html"):
        for ref in re.findall(r'(?:src|href)="([^"#]+)"', page.read_text()):
            assert (EXTENSION_DIR / ref).is_file(), (page.name, ref)
    bg = (EXTENSION_DIR / "background.js").read_text()
    assert f'"{HOST_NAME}"' in bg and "getSecurityInfo" in bg and '["blocking"]' in bg
