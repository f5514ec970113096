"""The Oblivious HTTP command line: ``serve --relay``, ``ohttp-rotate``, ``check --relay``.

Real ``parallax`` processes on loopback (as in test_cli_notary); the relayed check
itself end to end is in test_ohttp_relay.py (library) and the lab (CLI, namespaces).
"""

from __future__ import annotations

import json
import stat
from dataclasses import replace
from pathlib import Path

from client.cli._check import render_table
from client.verdict import ClientView, NotaryResult, Verdict
from notary.core import SigningKey
from notary.ohttp_gateway import GATEWAY_KEYS_FILE, load_gateway_keys
from tests.test_cli_notary import assert_one_line_error, run, serving


def _bundle_file(tmp_path: Path, url: str = "http://127.0.0.1:9", relay: bool = False) -> Path:
    k = SigningKey.generate()
    entry: dict[str, object] = {"name": "g", "url": url, "region": "r", "key_id": k.key_id, "public_key": k.verify_key.b64}
    if relay:
        entry["relay"] = True
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps({"version": 1, "notaries": [entry]}))
    return path


def test_ohttp_rotate(tmp_path: Path) -> None:
    p = run("ohttp-rotate", "--data-dir", str(tmp_path))
    assert "no gateway keys" in assert_one_line_error(p, 78)
    load_gateway_keys(tmp_path)  # what a notary does on its first start
    p = run("ohttp-rotate", "--data-dir", str(tmp_path))
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"previous": 0, "current": 1, "next": 2}
    assert stat.S_IMODE((tmp_path / GATEWAY_KEYS_FILE).stat().st_mode) == 0o600
    assert (tmp_path / GATEWAY_KEYS_FILE).read_text() not in p.stdout + p.stderr


def test_serve_relay_flags_need_each_other(tmp_path: Path) -> None:
    run("keygen", "--data-dir", str(tmp_path / "n"))
    p = run("serve", "--region", "test", "--data-dir", str(tmp_path / "n"), "--relay")
    assert "--bundle" in assert_one_line_error(p, 64)
    p = run("serve", "--region", "test", "--data-dir", str(tmp_path / "n"), "--bundle", str(_bundle_file(tmp_path)))
    assert "--relay" in assert_one_line_error(p, 64)
    p = run("serve", "--region", "test", "--data-dir", str(tmp_path / "n"), "--relay", "--bundle", str(tmp_path / "missing.json"))
    assert_one_line_error(p, 66)


def test_relay_notary_advertises_itself(tmp_path: Path) -> None:
    assert run("keygen", "--data-dir", str(tmp_path / "r")).returncode == 0
    with serving(tmp_path / "r", tmp_path / "relay.log", "--relay", "--bundle", str(_bundle_file(tmp_path))) as (base, _):
        p = run("notary-info", base)
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["relay"] is True
    entry = json.loads((tmp_path / "r" / "identity.json").read_text())
    assert entry["relay"] is True
    p = run("notary-info", "--data-dir", str(tmp_path / "r"))
    assert json.loads(p.stdout).get("relay") is True


def test_check_relay_usage_errors(tmp_path: Path) -> None:
    bundle = _bundle_file(tmp_path)
    p = run("check", "example.com", "--bundle", str(bundle), "--relay", "auto", "--observed", "sha256/" + "A" * 43 + "=")
    assert "relay" in assert_one_line_error(p, 64)
    p = run("check", "example.com", "--bundle", str(bundle), "--relay", "ftp://x", "--observed", "sha256/" + "A" * 43 + "=")
    assert "relay" in assert_one_line_error(p, 64)


def test_table_names_the_relay() -> None:
    v = Verdict("consistent", "example.com", 443, ClientView("ok", "00" * 32, "192.0.2.1", None, "probe"), (), 0, 0, 0,
                (), (), "summary", "mpic", 0, relays=("notary-4",))
    assert "relay: notary-4" in render_table(v)
    assert "relay:" not in render_table(replace(v, relays=()))
    # Exactly what was hidden: nobody saw the address, some did, or all did.
    results = tuple(NotaryResult(n, "r", "k" + n, "agrees", "") for n in ("notary-1", "notary-2"))
    v = replace(v, results=results)
    assert "the notaries asked saw the site but not your address" in render_table(v)
    some = render_table(replace(v, address_seen_by=("notary-2",)))
    assert "your address was seen by notary-2" in some and "the others saw the site, not your address" in some
    every = render_table(replace(v, address_seen_by=("notary-1", "notary-2")))
    assert "seen by notary-1, notary-2" in every and "not your address" not in every


def test_no_access_log_unless_the_operator_opts_in(tmp_path: Path) -> None:
    """By default nothing logs a request line with the client's address; --access-log does."""
    assert run("keygen", "--data-dir", str(tmp_path / "n")).returncode == 0
    with serving(tmp_path / "n", tmp_path / "quiet.log"):
        pass  # serving() waited for /healthz: at least one request was served
    quiet = (tmp_path / "quiet.log").read_text()
    assert "GET /healthz" not in quiet
    with serving(tmp_path / "n", tmp_path / "loud.log", "--access-log"):
        pass
    loud = (tmp_path / "loud.log").read_text()
    assert any("GET /healthz" in line and "127.0.0.1" in line for line in loud.splitlines()), loud[-2000:]
