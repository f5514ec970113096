"""Notary bundles: entries, merging, refusals, operator signatures, lookup order, and the bundle CLI."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from client.bundle import (
    MAX_BUNDLE_BYTES,
    MAX_NOTARIES,
    Bundle,
    BundleEntry,
    default_bundle_path,
    find_bundle_path,
    load_bundle,
    merge_entries,
    parse_bundle,
    sign_bundle,
)
from client.cli import main
from notary.core import SigningKey, canonical_encode
from notary.errors import InputError, VerificationError
from notary.keyfile import generate_key_file

FUTURE = 4_102_444_800  # 2100-01-01T00:00:00Z: signed bundles in tests that are not about expiry

PARALLAX = [sys.executable, "-c", "from client.cli import run_main; run_main()"]


def entry_dict(i: int, key: SigningKey | None = None, **over: Any) -> dict[str, Any]:
    key = key or SigningKey.generate()
    d = {"name": f"notary-{i}", "url": f"https://n{i}.example:8443", "region": f"r{i}",
         "key_id": key.key_id, "public_key": key.verify_key.b64}
    d.update(over)
    return d


# -- entries --------------------------------------------------------------------------------------

def test_entry_round_trip_and_defaults() -> None:
    d = entry_dict(1, country="DE", rir="RIPE")
    d["url"] += "/"
    e = BundleEntry.from_json(d)
    assert e.url == "https://n1.example:8443"  # trailing slash dropped
    assert e.to_json() == {**d, "url": "https://n1.example:8443"}
    assert e.verify_key.b64 == d["public_key"]
    no_region = {k: v for k, v in entry_dict(2).items() if k != "region"}
    assert BundleEntry.from_json(no_region).region == "unknown"
    assert "country" not in BundleEntry.from_json(entry_dict(3)).to_json()


@pytest.mark.parametrize("field", ["name", "url", "key_id", "public_key"])
@pytest.mark.parametrize("value", [None, "", 7, ["x"]])
def test_entry_required_fields(field: str, value: Any) -> None:
    d = entry_dict(1)
    d[field] = value
    with pytest.raises(InputError) as exc:
        BundleEntry.from_json(d)
    assert exc.value.code == "bad_bundle"


@pytest.mark.parametrize("url", ["ftp://n.example", "n.example:8443", "http://", "https:///path", "javascript:x",
                                 "file:///etc/passwd", "http://:8443", "http://n.example:99999",
                                 "http://n.example:port", "http://n.example/?x=1", "http://n.example?",
                                 "http://n.example#frag", "http://n.exa mple", "http://n.example\n", " http://n.example"])
def test_bad_url_refused(url: str) -> None:
    with pytest.raises(InputError, match="bad url"):
        BundleEntry.from_json(entry_dict(1, url=url))


@pytest.mark.parametrize(("url", "stored"), [
    ("http://127.0.0.1:8443", "http://127.0.0.1:8443"),
    ("https://n.example/", "https://n.example"),
    ("http://[::1]:9000/base/path/", "http://[::1]:9000/base/path"),
    ("HTTPS://N.example:443", "HTTPS://N.example:443"),
])
def test_good_urls_accepted(url: str, stored: str) -> None:
    assert BundleEntry.from_json(entry_dict(1, url=url)).url == stored


def test_key_id_mismatch_refused() -> None:
    other = SigningKey.generate()
    with pytest.raises(InputError, match="key_id does not match"):
        BundleEntry.from_json(entry_dict(1, key_id=other.key_id))


@pytest.mark.parametrize("pub", ["not base64!", base64.b64encode(b"short").decode(), base64.b64encode(b"\0" * 33).decode()])
def test_bad_public_key_refused(pub: str) -> None:
    with pytest.raises(InputError, match="bad public key"):
        BundleEntry.from_json(entry_dict(1, public_key=pub))


@pytest.mark.parametrize("junk", [None, "x", [], 5])
def test_entry_must_be_an_object(junk: Any) -> None:
    with pytest.raises(InputError):
        BundleEntry.from_json(junk)


@pytest.mark.parametrize(("field", "value"), [("region", 5), ("country", 5), ("rir", ["RIPE"])])
def test_optional_fields_must_be_strings(field: str, value: Any) -> None:
    with pytest.raises(InputError):
        BundleEntry.from_json(entry_dict(1, **{field: value}))


# -- bundles and merging --------------------------------------------------------------------------

def test_merge_entries_and_bundles() -> None:
    a, b, c = entry_dict(1), entry_dict(2), entry_dict(3)
    merged = merge_entries([a, {"version": 1, "notaries": [b, c]}])
    assert [e.name for e in merged.notaries] == ["notary-1", "notary-2", "notary-3"]
    assert merged.to_json() == {"version": 1, "notaries": [a, b, c]}
    assert Bundle.from_json(merged.to_json()) == merged
    assert set(merged.by_key()) == {a["key_id"], b["key_id"], c["key_id"]}


@pytest.mark.parametrize("what", ["key", "name", "url"])
def test_duplicates_refused(what: str) -> None:
    k = SigningKey.generate()
    a = entry_dict(1, key=k)
    b = entry_dict(2)
    if what == "key":
        b = entry_dict(2, key=k)
    elif what == "name":
        b["name"] = a["name"]
    else:
        b["url"] = a["url"] + "/"  # the same URL once normalised
    with pytest.raises(InputError, match=f"duplicate notary {what}") as exc:
        merge_entries([a, b])
    assert exc.value.code == "duplicate_notary"
    with pytest.raises(InputError, match="duplicate"):
        Bundle.from_json({"version": 1, "notaries": [a, b]})
    with pytest.raises(InputError, match="duplicate"):
        merge_entries([a]).add(BundleEntry.from_json(b))


@pytest.mark.parametrize("doc", [[], {"version": 2, "notaries": []}, {"notaries": []}, {"version": 1, "notaries": {}},
                                 {"version": 1}])
def test_bundle_shape_refused(doc: Any) -> None:
    with pytest.raises(InputError):
        Bundle.from_json(doc)


def test_too_many_notaries_refused() -> None:
    entries = [BundleEntry.from_json(entry_dict(i)) for i in range(MAX_NOTARIES + 1)]
    assert len(Bundle(tuple(entries[:MAX_NOTARIES])).notaries) == MAX_NOTARIES
    with pytest.raises(InputError, match="at most"):
        Bundle(tuple(entries))


def test_parse_bundle_refuses_non_json_and_oversize() -> None:
    with pytest.raises(InputError, match="not valid JSON"):
        parse_bundle(b"{not json")
    big = b'{"version": 1, "notaries": [], "pad": "' + b"x" * MAX_BUNDLE_BYTES + b'"}'
    with pytest.raises(InputError):
        parse_bundle(big)


# -- operator signatures --------------------------------------------------------------------------

def test_signed_bundle_verified_with_operator_key() -> None:
    op = SigningKey.generate()
    bundle = merge_entries([entry_dict(1), entry_dict(2)])
    raw = canonical_encode(sign_bundle(bundle, op, version=1, expires=FUTURE))
    got = parse_bundle(raw, [op.verify_key])
    assert got.notaries == bundle.notaries and got.signed_by == op.key_id
    # One of several trusted operator keys is enough.
    assert parse_bundle(raw, [SigningKey.generate().verify_key, op.verify_key]).signed_by == op.key_id


def test_signed_bundle_tampered_rejected() -> None:
    op = SigningKey.generate()
    bundle = merge_entries([entry_dict(1), entry_dict(2)])
    env = sign_bundle(bundle, op, version=1, expires=FUTURE)
    payload = json.loads(base64.b64decode(env["payload"]))
    payload["notaries"][0]["url"] = "https://attacker.example"
    env["payload"] = base64.b64encode(canonical_encode(payload)).decode()
    with pytest.raises(VerificationError):
        parse_bundle(canonical_encode(env), [op.verify_key])
    # A notary slipped in by appending to the signed list, likewise.
    env = sign_bundle(bundle, op, version=1, expires=FUTURE)
    payload = json.loads(base64.b64decode(env["payload"]))
    payload["notaries"].append(entry_dict(9))
    env["payload"] = base64.b64encode(canonical_encode(payload)).decode()
    with pytest.raises(VerificationError):
        parse_bundle(canonical_encode(env), [op.verify_key])


def test_signed_bundle_wrong_operator_key_rejected() -> None:
    bundle = merge_entries([entry_dict(1)])
    raw = canonical_encode(sign_bundle(bundle, SigningKey.generate(), version=1, expires=FUTURE))
    with pytest.raises(VerificationError):
        parse_bundle(raw, [SigningKey.generate().verify_key])


def test_signed_bundle_without_operator_key_refused() -> None:
    raw = canonical_encode(sign_bundle(merge_entries([entry_dict(1)]), SigningKey.generate(), version=1, expires=FUTURE))
    with pytest.raises(VerificationError, match="operator"):
        parse_bundle(raw)


def test_plain_bundle_with_operator_key_refused() -> None:
    raw = canonical_encode(merge_entries([entry_dict(1)]).to_json())
    assert parse_bundle(raw).signed_by is None
    with pytest.raises(VerificationError, match="not signed"):
        parse_bundle(raw, [SigningKey.generate().verify_key])


# -- lookup order ---------------------------------------------------------------------------------

def write_bundle(path: Path, *entries: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": 1, "notaries": list(entries)}))
    return path


def test_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PARALLAX_BUNDLE", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    user = write_bundle(tmp_path / "xdg" / "parallax" / "bundle.json", entry_dict(1))
    env = write_bundle(tmp_path / "env.json", entry_dict(2))
    explicit = write_bundle(tmp_path / "explicit.json", entry_dict(3))

    assert default_bundle_path() == user
    assert find_bundle_path() == user
    assert load_bundle().notaries[0].name == "notary-1"

    monkeypatch.setenv("PARALLAX_BUNDLE", str(env))
    assert find_bundle_path() == env
    assert load_bundle().notaries[0].name == "notary-2"

    assert find_bundle_path(explicit) == explicit
    assert load_bundle(str(explicit)).notaries[0].name == "notary-3"


def test_missing_bundle_is_an_input_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PARALLAX_BUNDLE", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "empty"))
    with pytest.raises(InputError) as exc:
        load_bundle()
    assert exc.value.code == "no_bundle" and str(tmp_path / "empty") in str(exc.value)
    with pytest.raises(InputError):
        load_bundle(tmp_path / "nope.json")
    with pytest.raises(InputError, match="cannot read"):
        load_bundle(tmp_path)  # a directory


# -- the bundle CLI -------------------------------------------------------------------------------

@pytest.fixture
def entries(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> list[Path]:
    """Three entry files made the operator's way: keygen, then notary-info."""
    out = []
    for i, region in enumerate(["eu", "us", "ap"], 1):
        d = tmp_path / f"n{i}"
        assert main(["keygen", "--data-dir", str(d)]) == 0
        capsys.readouterr()
        assert main(["notary-info", "--data-dir", str(d), "--name", f"notary-{i}", "--region", region,
                     "--public-url", f"http://127.0.0.1:{9200 + i}"]) == 0
        p = tmp_path / f"entry-{i}.json"
        p.write_text(capsys.readouterr().out)
        out.append(p)
    return out


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_cli_merge_to_stdout_and_file(entries: list[Path], tmp_path: Path, capsys) -> None:
    code, out, err = run_cli(["bundle", "merge", str(entries[0]), str(entries[1])], capsys)
    assert code == 0 and err == ""
    doc = json.loads(out)
    assert [e["name"] for e in doc["notaries"]] == ["notary-1", "notary-2"]
    assert [e["region"] for e in doc["notaries"]] == ["eu", "us"]
    target = tmp_path / "merged.json"
    code, out, err = run_cli(["bundle", "merge", *map(str, entries), "-o", str(target)], capsys)
    assert code == 0 and out.strip() == str(target)
    assert len(load_bundle(target).notaries) == 3


def test_cli_add_and_show(entries: list[Path], tmp_path: Path, capsys) -> None:
    b = tmp_path / "cfg" / "bundle.json"
    for i, e in enumerate(entries, 1):
        code, out, _ = run_cli(["bundle", "add", str(e), "--bundle", str(b)], capsys)
        assert code == 0 and f"added notary-{i}" in out
    assert [e.name for e in load_bundle(b).notaries] == ["notary-1", "notary-2", "notary-3"]
    code, out, _ = run_cli(["bundle", "show", str(b)], capsys)
    lines = out.splitlines()
    assert code == 0 and len(lines) == 3
    assert lines[0].split()[:3] == ["notary-1", "eu", "http://127.0.0.1:9201"]
    assert "signed by" not in out


def test_cli_sign_then_show_with_operator_key(entries: list[Path], tmp_path: Path, capsys) -> None:
    plain = tmp_path / "plain.json"
    assert run_cli(["bundle", "merge", *map(str, entries), "-o", str(plain)], capsys)[0] == 0
    op = generate_key_file(tmp_path / "operator")
    signed_path = tmp_path / "signed.json"
    code, out, _ = run_cli(["bundle", "sign", str(plain), "--key-dir", str(tmp_path / "operator"), "-o",
                            str(signed_path), "--version", "1", "--valid-for", "30"], capsys)
    assert code == 0 and out.strip() == str(signed_path)
    assert "payloadType" in json.loads(signed_path.read_text())

    code, out, err = run_cli(["bundle", "show", str(signed_path), "--operator-key", op.verify_key.b64], capsys)
    assert code == 0, err
    assert out.splitlines()[0].startswith(f"signed by {op.key_id}, version 1, expires 20")
    assert len(out.splitlines()) == 4
    assert load_bundle(signed_path, [op.verify_key]).signed_by == op.key_id

    # Without the operator key, or with another one: refused in one line (bad data, 65).
    for extra in ([], ["--operator-key", SigningKey.generate().verify_key.b64]):
        code, out, err = run_cli(["bundle", "show", str(signed_path), *extra], capsys)
        assert code == 65 and out == "" and len(err.strip().splitlines()) == 1
    # A malformed operator key is a usage error.
    code, _, err = run_cli(["bundle", "show", str(signed_path), "--operator-key", "nope"], capsys)
    assert code == 64 and len(err.strip().splitlines()) == 1

    # Tampering with the signed file is detected.
    env = json.loads(signed_path.read_text())
    payload = json.loads(base64.b64decode(env["payload"]))
    payload["notaries"][0]["region"] = "zz"
    env["payload"] = base64.b64encode(canonical_encode(payload)).decode()
    signed_path.write_text(json.dumps(env))
    code, out, err = run_cli(["bundle", "show", str(signed_path), "--operator-key", op.verify_key.b64], capsys)
    assert code == 65 and out == "" and "signature" in err


def test_cli_duplicate_entry_exit_64_one_line(entries: list[Path], tmp_path: Path, capsys) -> None:
    b = tmp_path / "bundle.json"
    assert run_cli(["bundle", "add", str(entries[0]), "--bundle", str(b)], capsys)[0] == 0
    before = b.read_text()
    code, out, err = run_cli(["bundle", "add", str(entries[0]), "--bundle", str(b)], capsys)
    assert code == 64 and out == ""
    assert len(err.strip().splitlines()) == 1 and "duplicate notary" in err
    assert b.read_text() == before  # nothing written
    code, out, err = run_cli(["bundle", "merge", str(entries[1]), str(entries[1])], capsys)
    assert code == 64 and out == "" and len(err.strip().splitlines()) == 1 and "duplicate" in err


def test_cli_duplicate_as_a_real_process(entries: list[Path]) -> None:
    p = subprocess.run([*PARALLAX, "bundle", "merge", str(entries[0]), str(entries[0])],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 64 and p.stdout == ""
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


def test_cli_bad_inputs(entries: list[Path], tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(["bundle", "merge", str(tmp_path / "missing.json")], capsys)
    assert code == 66 and len(err.strip().splitlines()) == 1
    junk = tmp_path / "junk.json"
    junk.write_text("{nope")
    code, _, err = run_cli(["bundle", "merge", str(junk)], capsys)
    assert code == 65 and len(err.strip().splitlines()) == 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(entry_dict(1, url="ftp://x")))
    code, _, err = run_cli(["bundle", "merge", str(bad)], capsys)
    assert code == 65 and "bad url" in err and len(err.strip().splitlines()) == 1  # malformed bundle data


def test_unreadable_bundle_is_an_io_error(tmp_path: Path, capsys) -> None:
    """A bundle path that exists but cannot be read (here: a directory) exits 74, not 66."""
    from client.cli import main

    d = tmp_path / "bundle.json"
    d.mkdir()
    code = main(["check", "localhost:443", "--bundle", str(d)])
    err = capsys.readouterr().err
    assert code == 74 and len(err.strip().splitlines()) == 1 and "cannot read bundle" in err
