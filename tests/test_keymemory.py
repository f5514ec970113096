"""The memory of keys seen: real SQLite in a temporary state directory, and the ``parallax pins`` commands."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from client.cli import main
from client.keymemory import MAX_KEYS_PER_TARGET, KeyStore
from client.state import state_dir
from notary.core import Target, pin_from_spki_hex
from notary.errors import StoreError

A, B, C = "a1" * 32, "b2" * 32, "c3" * 32


def test_state_dir_follows_the_env_and_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "nested" / "state"
    monkeypatch.setenv("PARALLAX_STATE_DIR", str(d))
    assert state_dir() == d and d.is_dir()
    assert stat.S_IMODE(d.stat().st_mode) == 0o700


def test_record_and_read_per_host_port_and_sni(tmp_path: Path) -> None:
    ks = KeyStore(tmp_path / "k.sqlite3")
    t = Target.parse("example.com", 443)
    other_sni = Target.parse("example.com", 443, "www.example.com")
    ks.record(t, A, "consistent", 100)
    ks.record(t, A, "consistent", 200)
    ks.record(t, B, "mitm_suspected", 300)
    ks.record(other_sni, C, "consistent", 400)
    mem = ks.memory(t)
    assert [(k.spki_sha256, k.first_seen, k.last_seen, k.statuses) for k in mem.keys] == [
        (A, 100, 200, (("consistent", 2),)), (B, 300, 300, (("mitm_suspected", 1),))]
    assert mem.keys[0].vouched and not mem.keys[1].vouched
    # A key seen under another SNI is not a key seen for this one (history poisoning).
    assert [k.spki_sha256 for k in ks.memory(other_sni).keys] == [C]
    assert ks.memory(Target.parse("example.com", 8443)).keys == ()
    assert stat.S_IMODE((tmp_path / "k.sqlite3").stat().st_mode) == 0o600


def test_keys_per_target_are_bounded(tmp_path: Path) -> None:
    ks = KeyStore(tmp_path / "k.sqlite3")
    t = Target.parse("busy.example", 443)
    for i in range(MAX_KEYS_PER_TARGET + 5):
        ks.record(t, f"{i:064x}", "consistent", 1000 + i)
    keys = ks.memory(t).keys
    assert len(keys) == MAX_KEYS_PER_TARGET
    assert f"{0:064x}" not in {k.spki_sha256 for k in keys}  # the least recently seen went first


def test_pins_forget_export(tmp_path: Path) -> None:
    ks = KeyStore(tmp_path / "k.sqlite3")
    t = Target.parse("example.com", 443)
    ks.record(t, A, "consistent", 100)
    ks.record(Target.parse("example.com", 8443), B, "consistent", 100)
    ks.pin(t, A, 50)
    assert ks.memory(t).pinned == (A,)
    doc = ks.export()
    assert doc["format"] == "parallax-key-memory/1" and len(doc["targets"]) == 2
    assert ks.forget("example.com", 443) == 2  # one key, one pin
    assert [x["port"] for x in ks.targets()] == [8443]
    assert ks.forget("example.com") == 1 and ks.targets() == []


def test_a_corrupt_file_is_a_store_error(tmp_path: Path) -> None:
    p = tmp_path / "k.sqlite3"
    p.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError):
        KeyStore(p).memory(Target.parse("example.com", 443))


def test_pins_commands(capsys: pytest.CaptureFixture[str]) -> None:
    ks = KeyStore()  # the conftest's private PARALLAX_STATE_DIR
    assert Path(os.environ["PARALLAX_STATE_DIR"]) in ks.path.parents
    assert main(["pins", "list"]) == 0 and "no keys remembered" in capsys.readouterr().out
    ks.record(Target.parse("example.com", 443), A, "consistent", 1_700_000_000)
    ks.record(Target.parse("example.com", 443), B, "key_changed", 1_700_000_100)
    assert main(["pins", "list"]) == 0
    out = capsys.readouterr().out
    assert "example.com:443" in out and "keys=2" in out and "2023-11-14" in out
    assert main(["pins", "show", "example.com", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [k["pin"] for k in shown[0]["keys"]] == [pin_from_spki_hex(A), pin_from_spki_hex(B)]
    assert shown[0]["keys"][1]["statuses"] == {"key_changed": 1}
    assert main(["pins", "pin", "example.com", pin_from_spki_hex(A)]) == 0
    assert ks.memory(Target.parse("example.com", 443)).pinned == (A,)
    assert main(["pins", "export"]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["targets"][0]["pinned"] == [pin_from_spki_hex(A)]
    assert main(["pins", "forget", "example.com:443"]) == 0 and "forgot 3" in capsys.readouterr().out
    # Nothing left: show and forget say so with 66, one line.
    assert main(["pins", "show", "example.com"]) == 66
    assert main(["pins", "forget", "example.com"]) == 66
    assert capsys.readouterr().err.count("\n") == 2


def test_pins_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pins", "pin", "example.com", "sha256/nope"]) == 65
    assert main(["pins", "show", "example.com:99999"]) == 64
    assert main(["pins", "pin", "-bad-", "sha256/" + "A" * 43 + "="]) == 64
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 3
