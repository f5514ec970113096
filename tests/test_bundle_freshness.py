"""Signed bundles expire and never roll back (issue 8, item 9).

The pure check (``check_signed_bundle``/``parse_bundle(now=...)``) table-driven; the state file
(client.bundle_state) on a real temporary directory; the CLI (``bundle sign``, ``check``) and the
browser helper's service refusing an expired or older bundle in one line with a documented code.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from client.bundle import (
    BUNDLE_TYPE,
    MAX_INT,
    Bundle,
    check_signed_bundle,
    load_bundle,
    merge_entries,
    parse_bundle,
    sign_bundle,
)
from client.bundle_state import STATE_FILE, BundleState, default_state_dir
from client.cli import main
from client.helper.service import HelperConfig, HelperService
from notary.core import SigningKey, canonical_encode, sign_envelope
from notary.errors import ConfigError, InputError, ParallaxError
from notary.keyfile import generate_key_file

NOW = 1_800_000_000
DAY = 86400


def entry(i: int) -> dict[str, Any]:
    k = SigningKey.generate()
    return {"name": f"n{i}", "url": f"https://n{i}.example", "region": f"r{i}", "key_id": k.key_id,
            "public_key": k.verify_key.b64}


PLAIN = merge_entries([entry(1), entry(2)])


def signed_raw(op: SigningKey, version: int, expires: int, bundle: Bundle = PLAIN) -> bytes:
    return canonical_encode(sign_bundle(bundle, op, version=version, expires=expires))


# -- the pure check ------------------------------------------------------------------------------

@pytest.mark.parametrize(("version", "expires", "highest", "error"), [
    (1, NOW + 1, None, None),
    (1, NOW, None, "bundle_expired"),          # expires is the first instant it is invalid
    (1, NOW - DAY, None, "bundle_expired"),
    (5, NOW + DAY, 5, None),                   # the same version again is fine
    (6, NOW + DAY, 5, None),
    (4, NOW + DAY, 5, "bundle_rollback"),
    (1, NOW + DAY, MAX_INT, "bundle_rollback"),
    (4, NOW - 1, 5, "bundle_expired"),         # expiry is checked first
])
def test_check_signed_bundle_table(version: int, expires: int, highest: int | None, error: str | None) -> None:
    op = SigningKey.generate()
    b = parse_bundle(signed_raw(op, version, expires), [op.verify_key])
    assert (b.signed_by, b.bundle_version, b.expires) == (op.key_id, version, expires)
    hi = {op.key_id: highest} if highest is not None else None
    if error is None:
        check_signed_bundle(b, now=NOW, highest=highest)
        assert parse_bundle(signed_raw(op, version, expires), [op.verify_key], now=NOW, highest=hi) == b
        return
    with pytest.raises(InputError) as info:
        check_signed_bundle(b, now=NOW, highest=highest)
    assert info.value.code == error
    assert "\n" not in str(info.value) and f"version {version}" in str(info.value)
    with pytest.raises(InputError):
        parse_bundle(signed_raw(op, version, expires), [op.verify_key], now=NOW, highest=hi)


def test_rollback_is_per_operator_key() -> None:
    a, b = SigningKey.generate(), SigningKey.generate()
    got = parse_bundle(signed_raw(b, 1, NOW + DAY), [a.verify_key, b.verify_key], now=NOW, highest={a.key_id: 9})
    assert got.signed_by == b.key_id


def test_plain_bundle_is_never_checked() -> None:
    check_signed_bundle(Bundle(PLAIN.notaries, None, 1, NOW - DAY), now=NOW, highest=99)
    raw = canonical_encode(Bundle(PLAIN.notaries, bundle_version=3, expires=NOW - DAY).to_json())
    assert parse_bundle(raw, now=NOW).expires == NOW - DAY


def test_signed_bundle_without_version_or_expiry_is_refused() -> None:
    """A bundle signed the old way (before issue 8) would verify forever: refused."""
    op = SigningKey.generate()
    for extra in ({}, {"bundle_version": 3}, {"expires": NOW + DAY}):
        payload = {**PLAIN.to_json(), **extra}
        raw = canonical_encode(sign_envelope(BUNDLE_TYPE, canonical_encode(payload), op))
        with pytest.raises(InputError) as info:
            parse_bundle(raw, [op.verify_key])
        assert info.value.code == "bad_bundle" and "--version" in str(info.value)


@pytest.mark.parametrize("bad", [0, -1, True, MAX_INT + 1, 1.5, "3"])
def test_bad_version_or_expiry_is_refused(bad: Any) -> None:
    op = SigningKey.generate()
    with pytest.raises(InputError):
        sign_bundle(PLAIN, op, version=bad, expires=NOW)
    with pytest.raises(InputError):
        sign_bundle(PLAIN, op, version=1, expires=bad)
    payload = {**PLAIN.to_json(), "bundle_version": bad, "expires": NOW + DAY}
    raw = canonical_encode(sign_envelope(BUNDLE_TYPE, json.dumps(payload).encode(), op))
    with pytest.raises(ParallaxError):  # InputError, or VerificationError for what canonical JSON refuses
        parse_bundle(raw, [op.verify_key])


def test_version_and_expiry_are_signed() -> None:
    op = SigningKey.generate()
    env = sign_bundle(PLAIN, op, version=2, expires=NOW + DAY)
    payload = json.loads(base64.b64decode(env["payload"]))
    assert (payload["bundle_version"], payload["expires"]) == (2, NOW + DAY)
    payload["expires"] = NOW + 400 * DAY  # extend an expiring bundle without the operator
    env["payload"] = base64.b64encode(canonical_encode(payload)).decode()
    with pytest.raises(Exception) as info:
        parse_bundle(canonical_encode(env), [op.verify_key])
    assert "signature" in str(info.value)


# -- the state file ------------------------------------------------------------------------------

def write(path: Path, raw: bytes) -> Path:
    path.write_bytes(raw)
    return path


def test_load_bundle_remembers_the_highest_version(tmp_path: Path) -> None:
    op, other = SigningKey.generate(), SigningKey.generate()
    state = tmp_path / "state"
    f = tmp_path / "b.json"
    keys = [op.verify_key, other.verify_key]
    assert load_bundle(write(f, signed_raw(op, 2, NOW + DAY)), keys, now=NOW, state_dir=state).bundle_version == 2
    doc = json.loads((state / STATE_FILE).read_text())
    assert doc == {"version": 1, "operators": {op.key_id: 2}}
    # Private: the directory 0700, the file 0600; no temporary file left behind.
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / STATE_FILE).stat().st_mode) == 0o600
    assert [p.name for p in state.iterdir()] == [STATE_FILE]

    with pytest.raises(InputError) as info:
        load_bundle(write(f, signed_raw(op, 1, NOW + 9 * DAY)), keys, now=NOW, state_dir=state)
    assert info.value.code == "bundle_rollback" and "version 2" in str(info.value)
    assert load_bundle(write(f, signed_raw(op, 2, NOW + DAY)), keys, now=NOW, state_dir=state).bundle_version == 2
    assert load_bundle(write(f, signed_raw(op, 5, NOW + DAY)), keys, now=NOW, state_dir=state).bundle_version == 5
    # Another operator key has its own memory.
    assert load_bundle(write(f, signed_raw(other, 1, NOW + DAY)), keys, now=NOW, state_dir=state).bundle_version == 1
    assert json.loads((state / STATE_FILE).read_text())["operators"] == {op.key_id: 5, other.key_id: 1}
    with pytest.raises(InputError):
        load_bundle(write(f, signed_raw(op, 4, NOW + DAY)), keys, now=NOW, state_dir=state)
    # An expired bundle is not remembered.
    with pytest.raises(InputError) as info:
        load_bundle(write(f, signed_raw(op, 9, NOW)), keys, now=NOW, state_dir=state)
    assert info.value.code == "bundle_expired"
    assert BundleState(state).highest(op.key_id) == 5


def test_the_default_clock_decides_expiry(tmp_path: Path) -> None:
    op = SigningKey.generate()
    f = write(tmp_path / "b.json", signed_raw(op, 1, int(time.time()) - 1))
    with pytest.raises(InputError) as info:
        load_bundle(f, [op.verify_key])
    assert info.value.code == "bundle_expired"


def test_state_dir_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARALLAX_STATE_DIR", str(tmp_path / "env-state"))
    assert default_state_dir() == tmp_path / "env-state"
    op = SigningKey.generate()
    load_bundle(write(tmp_path / "b.json", signed_raw(op, 3, NOW + DAY)), [op.verify_key], now=NOW)
    assert BundleState().highest(op.key_id) == 3
    assert (tmp_path / "env-state" / STATE_FILE).exists()
    monkeypatch.delenv("PARALLAX_STATE_DIR")
    assert default_state_dir().name == "parallax"  # platformdirs' user state dir


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b'{"version": 2, "operators": {}}',
                                     b'{"version": 1, "operators": {"k": 0}}',
                                     b'{"version": 1, "operators": {"k": true}}'])
def test_corrupt_state_is_a_config_error_never_a_reset(tmp_path: Path, content: bytes) -> None:
    op = SigningKey.generate()
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / STATE_FILE).write_bytes(content)
    with pytest.raises(ConfigError, match="delete it"):
        load_bundle(write(tmp_path / "b.json", signed_raw(op, 1, NOW + DAY)), [op.verify_key], now=NOW,
                    state_dir=tmp_path / "state")
    assert (tmp_path / "state" / STATE_FILE).read_bytes() == content


def test_unwritable_state_dir_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="cannot read .*Not a directory"):
        BundleState(tmp_path / "file" / "state").accept("ed25519:" + "0" * 64, 1)


def test_failed_rename_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = BundleState(tmp_path / "state")
    state.accept("k", 1)
    old = state.path.read_bytes()

    def broken_replace(*_a: Any) -> None:
        # A fake at the seam: a rename failing after the temporary file is written cannot be
        # provoked for real here (the suite may run as root, where permissions do not stop it).
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(ConfigError, match="cannot record.*No space left"):
        state.accept("k", 2)
    monkeypatch.undo()
    assert state.path.read_bytes() == old and state.highest("k") == 1
    assert [p.name for p in state.dir.iterdir()] == [STATE_FILE]


# -- the command line ----------------------------------------------------------------------------

def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.fixture
def operator(tmp_path: Path) -> tuple[Path, SigningKey, Path]:
    d = tmp_path / "operator"
    key = generate_key_file(d)
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(PLAIN.to_json()))
    return d, key, plain


def test_cli_sign_needs_version_and_expiry(operator, tmp_path: Path, capsys) -> None:
    d, _, plain = operator
    base = ["bundle", "sign", str(plain), "--key-dir", str(d)]
    for extra in ([], ["--version", "1"], ["--valid-for", "3"], ["--version", "1", "--valid-for", "3",
                                                                  "--expires", "2099-01-01"],
                  ["--version", "0", "--valid-for", "3"], ["--version", "x", "--valid-for", "3"],
                  ["--version", "1", "--valid-for", "0"], ["--version", "1", "--expires", "soon"],
                  ["--version", "1", "--expires", "2001-01-01"]):
        code, out, err = run(base + extra, capsys)
        assert code == 64 and out == "" and len(err.strip().splitlines()) == 1, (extra, err)


def test_cli_sign_expires_and_valid_for(operator, tmp_path: Path, capsys) -> None:
    d, key, plain = operator
    out = tmp_path / "s.json"
    code, _, err = run(["bundle", "sign", str(plain), "--key-dir", str(d), "--version", "3", "--expires",
                        "2099-01-31", "-o", str(out)], capsys)
    assert code == 0, err
    b = parse_bundle(out.read_bytes(), [key.verify_key])
    assert (b.bundle_version, b.expires) == (3, 4073500800)  # 2099-01-31T00:00:00Z
    code, _, err = run(["bundle", "sign", str(plain), "--key-dir", str(d), "--version", "4", "--expires",
                        "2099-01-31T12:30:00Z", "-o", str(out)], capsys)
    assert code == 0 and parse_bundle(out.read_bytes(), [key.verify_key]).expires == 4073500800 + 45000
    before = int(time.time())
    code, _, err = run(["bundle", "sign", str(plain), "--key-dir", str(d), "--version", "5", "--valid-for", "30",
                        "-o", str(out)], capsys)
    assert code == 0
    exp = parse_bundle(out.read_bytes(), [key.verify_key]).expires
    assert exp is not None and before + 30 * DAY <= exp <= int(time.time()) + 30 * DAY
    code, text, _ = run(["bundle", "show", str(out), "--operator-key", key.verify_key.b64], capsys)
    assert code == 0 and text.splitlines()[0].startswith(f"signed by {key.key_id}, version 5, expires 20")


def test_cli_check_refuses_expired_and_rolled_back_bundles(operator, tmp_path: Path, capsys) -> None:
    """Refused before any network I/O: exit 65, one line naming the reason."""
    d, key, _ = operator
    pub = key.verify_key.b64
    f = tmp_path / "signed.json"
    f.write_bytes(signed_raw(key, 7, int(time.time()) - 60))
    code, out, err = run(["check", "example.com", "--bundle", str(f), "--operator-key", pub], capsys)
    assert code == 65 and out == "" and len(err.strip().splitlines()) == 1 and "expired" in err, err
    # show still lists it, marked, and records nothing.
    code, text, _ = run(["bundle", "show", str(f), "--operator-key", pub], capsys)
    assert code == 0 and "(EXPIRED)" in text.splitlines()[0]
    assert BundleState().highest(key.key_id) is None

    BundleState().accept(key.key_id, 8)
    f.write_bytes(signed_raw(key, 7, int(time.time()) + DAY))
    code, out, err = run(["check", "example.com", "--bundle", str(f), "--operator-key", pub], capsys)
    assert code == 65 and len(err.strip().splitlines()) == 1 and "older than version 8" in err, err


def test_cli_corrupt_state_exits_78(operator, tmp_path: Path, capsys) -> None:
    d, key, _ = operator
    (default_state_dir()).mkdir(parents=True, exist_ok=True)
    (default_state_dir() / STATE_FILE).write_text("garbage")
    f = tmp_path / "signed.json"
    f.write_bytes(signed_raw(key, 1, int(time.time()) + DAY))
    code, _, err = run(["check", "example.com", "--bundle", str(f), "--operator-key", key.verify_key.b64], capsys)
    assert code == 78 and len(err.strip().splitlines()) == 1 and "corrupt" in err


async def test_helper_refuses_an_expired_or_older_bundle(tmp_path: Path) -> None:
    op = SigningKey.generate()
    f = tmp_path / "signed.json"
    cfg = HelperConfig(bundle=str(f), operator_keys=(op.verify_key.b64,))

    async def never(*_a: Any) -> Any:  # the verification must not be reached
        raise AssertionError("verified with a refused bundle")

    f.write_bytes(signed_raw(op, 2, int(time.time()) - 1))
    r = await HelperService(cfg, verify=never).handle({"type": "check", "id": 1, "host": "a.example"})
    assert r["type"] == "error" and r["error"] == "bundle_expired", r
    BundleState().accept(op.key_id, 3)
    f.write_bytes(signed_raw(op, 2, int(time.time()) + DAY))
    r = await HelperService(cfg, verify=never).handle({"type": "check", "id": 2, "host": "a.example"})
    assert r["type"] == "error" and r["error"] == "bundle_rollback", r
    assert os.environ["PARALLAX_STATE_DIR"] in str(BundleState().path)
