"""The notary commands of the ``parallax`` CLI, run as real processes."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from notary.core import VerifyKey, verify_identity
from tests.support.proc import stop, wait_healthy
from tests.support.tls import make_ca, server_context, tls_target_in_thread

PARALLAX = [sys.executable, "-c", "from client.cli import run_main; run_main()"]

# Every stdout/stderr/log this module produced, checked for the private seed at the end.
OUTPUTS: list[tuple[str, str]] = []
SEEDS: list[bytes] = []


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([*PARALLAX, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    OUTPUTS.append((" ".join(args), p.stdout + p.stderr))
    return p


def seed_of(data_dir: Path) -> bytes:
    text = (data_dir / "notary.key").read_text().strip()
    seed = base64.b64decode(text, validate=True)
    assert len(seed) == 32
    SEEDS.append(seed)
    return seed


def assert_no_secret(text: str, seed: bytes) -> None:
    assert base64.b64encode(seed).decode() not in text
    assert base64.b64encode(seed).decode().rstrip("=") not in text
    assert seed.hex() not in text


def assert_one_line_error(p: subprocess.CompletedProcess[str], code: int) -> str:
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout
    return lines[0]


@pytest.fixture(scope="module", autouse=True)
def never_print_a_seed() -> Iterator[None]:
    yield
    for seed in SEEDS:
        for what, text in OUTPUTS:
            assert base64.b64encode(seed).decode() not in text, what
            assert seed.hex() not in text, what


@pytest.fixture
def keyed(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    d = tmp_path / "notary"
    p = run("keygen", "--data-dir", str(d))
    assert p.returncode == 0, p.stderr
    seed_of(d)  # every output of the module is checked against this key's seed
    return d, json.loads(p.stdout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(data_dir: Path, log: Path, *extra: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real ``parallax serve`` on a free loopback port, stopped (and its log collected) at the end."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [*PARALLAX, "--log-level", "DEBUG", "serve", "--region", "test", "--data-dir", str(data_dir),
             "--listen", f"127.0.0.1:{port}", "--allow-network", "127.0.0.0/8", "--allow-port", "any", *extra],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    try:
        wait_healthy(base, proc, log)
        yield base, proc
    finally:
        stop(proc)
        OUTPUTS.append(("serve log", log.read_text()))


# -- keygen ----------------------------------------------------------------------------------------

def test_keygen_creates_a_private_key_and_refuses_to_overwrite(tmp_path: Path) -> None:
    d = tmp_path / "a" / "notary"
    p = run("keygen", "--data-dir", str(d))
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    key_file = d / "notary.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    seed = seed_of(d)
    assert_no_secret(p.stdout + p.stderr, seed)
    pub = VerifyKey.from_b64((d / "notary.pub").read_text().strip())
    assert out == {"key_id": pub.key_id, "public_key": pub.b64}
    assert stat.S_IMODE((d / "notary.pub").stat().st_mode) & 0o022 == 0

    before = key_file.read_bytes()
    again = run("keygen", "--data-dir", str(d))
    line = assert_one_line_error(again, 73)
    assert "already exists" in line
    assert again.stdout == ""
    assert key_file.read_bytes() == before  # untouched
    assert_no_secret(again.stdout + again.stderr, seed)


# -- serve refuses bad keys and bad flags ----------------------------------------------------------

@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_serve_refuses_a_key_readable_by_others(keyed: tuple[Path, dict[str, Any]], mode: int) -> None:
    d, _ = keyed
    seed = seed_of(d)
    os.chmod(d / "notary.key", mode)
    p = run("serve", "--region", "test", "--data-dir", str(d), "--listen", f"127.0.0.1:{free_port()}", timeout=30)
    line = assert_one_line_error(p, 78)
    assert f"{mode:04o}" in line and "chmod 600" in line
    assert_no_secret(p.stdout + p.stderr, seed)
    assert p.stdout == ""  # it never started


def test_serve_without_a_key_or_with_a_broken_key_is_a_config_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    line = assert_one_line_error(run("serve", "--region", "test", "--data-dir", str(empty)), 78)
    assert "keygen" in line
    broken = tmp_path / "broken"
    broken.mkdir()
    fd = os.open(broken / "notary.key", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"not base64 at all!\n")
    os.close(fd)
    assert_one_line_error(run("serve", "--region", "test", "--data-dir", str(broken)), 78)
    short = tmp_path / "short"
    short.mkdir()
    fd = os.open(short / "notary.key", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, base64.b64encode(b"x" * 16) + b"\n")
    os.close(fd)
    assert_one_line_error(run("serve", "--region", "test", "--data-dir", str(short)), 78)


BAD_FLAGS = [
    [],
    ["frobnicate"],
    ["keygen"],
    ["notary-info"],
    ["serve"],
    ["serve", "--region", "test", "--data-dir", "{d}", "--bogus"],
    ["serve", "--region", "test", "--data-dir", "{d}", "--listen", "nope"],
    ["serve", "--region", "test", "--data-dir", "{d}", "--listen", "127.0.0.1:99999"],
    ["serve", "--region", "test", "--data-dir", "{d}", "--listen", "127.0.0.1:http"],
    ["serve", "--region", "test", "--data-dir", "{d}", "--rate", "fast"],
    ["serve", "--region", "test", "--data-dir", "{d}", "--ttl", "1.5"],
    ["serve", "--region", "test", "--data-dir", "{d}", "--allow-port", "https"],
    ["serve", "--region", "test", "--data-dir", "{d}", "--watch", "bad..host:443"],
    ["serve", "--region", "test", "--data-dir", "{d}", "--watch", "a.example:70000"],
    ["notary-info", "http://127.0.0.1:1", "--data-dir", "{d}"],
    ["notary-info", "--data-dir", "{d}", "--timeout", "soon"],
]


@pytest.mark.parametrize("argv", BAD_FLAGS, ids=lambda a: " ".join(a) or "nothing")
def test_bad_flags_exit_64_with_one_line(keyed: tuple[Path, dict[str, Any]], argv: list[str]) -> None:
    d, _ = keyed
    p = run(*(a.replace("{d}", str(d)) for a in argv))
    assert_one_line_error(p, 64)
    assert p.stdout == ""
    assert not (d / "identity.json").exists()  # serve never got as far as starting


def test_bad_allow_network_is_a_config_error(keyed: tuple[Path, dict[str, Any]]) -> None:
    d, _ = keyed
    line = assert_one_line_error(run("serve", "--region", "test", "--data-dir", str(d), "--allow-network", "10.0.0.0/33"), 78)
    assert "10.0.0.0/33" in line


# -- notary-info -----------------------------------------------------------------------------------

def test_notary_info_from_the_data_dir(keyed: tuple[Path, dict[str, Any]]) -> None:
    d, generated = keyed
    seed = seed_of(d)
    p = run("notary-info", "--data-dir", str(d))
    assert p.returncode == 0, p.stderr
    entry = json.loads(p.stdout)
    assert entry["key_id"] == generated["key_id"]
    assert entry["public_key"] == generated["public_key"]
    assert VerifyKey.from_b64(entry["public_key"]).key_id == entry["key_id"]
    assert {"name", "url", "region"} <= set(entry)
    assert_no_secret(p.stdout + p.stderr, seed)

    p = run("notary-info", "--data-dir", str(d), "--name", "ams-1", "--region", "eu-west",
            "--public-url", "https://ams.example")
    assert p.returncode == 0, p.stderr
    entry = json.loads(p.stdout)
    assert (entry["name"], entry["region"], entry["url"]) == ("ams-1", "eu-west", "https://ams.example")
    assert entry["key_id"] == generated["key_id"]

    nokey = d.parent / "nokey"
    nokey.mkdir()
    line = assert_one_line_error(run("notary-info", "--data-dir", str(nokey)), 66)
    assert "keygen" in line


def test_notary_info_from_a_running_notary_and_serve_log_has_no_secret(
    keyed: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    d, generated = keyed
    seed = seed_of(d)
    log = tmp_path / "serve.log"
    export = tmp_path / "out" / "entry.json"
    ca = make_ca()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    with tls_target_in_thread(server_context(cert)) as target, \
            serving(d, log, "--name", "nyc-1", "--region", "us-east", "--country", "US",
                    "--export-entry", str(export)) as (base, proc):
        p = run("notary-info", base)
        assert p.returncode == 0, p.stderr
        entry = json.loads(p.stdout)
        assert entry == {"name": "nyc-1", "url": base, "region": "us-east", "country": "US",
                         "key_id": generated["key_id"], "public_key": generated["public_key"]}
        assert json.loads(export.read_text()) == entry
        # The entry the CLI printed verifies the live identity document.
        with urllib.request.urlopen(base + "/v1/notary", timeout=10) as r:
            ident = verify_identity(json.loads(r.read()), VerifyKey.from_b64(entry["public_key"]))
        assert ident.key_id == generated["key_id"]
        # After serving, the local entry carries the name, region and URL too.
        local = run("notary-info", "--data-dir", str(d))
        assert json.loads(local.stdout) == entry
        # Exercise the probe path so the log has something to say.
        req = urllib.request.Request(
            base + "/v1/observe", method="POST", headers={"Content-Type": "application/json"},
            data=json.dumps({"targets": [{"host": "127.0.0.1", "port": target.port}],
                             "nonce": "cli-test-nonce-0001", "max_age": 0}).encode())
        with urllib.request.urlopen(req, timeout=15) as r:
            bodies = [r.read()]
        for path in ("/healthz", "/metrics", "/v1/openapi.json", "/v1/notary"):
            with urllib.request.urlopen(base + path, timeout=10) as r:
                bodies.append(r.read())
        # Somewhere that answers, but is not a notary.
        bad = run("notary-info", base + "/nope")
        assert "HTTP 404" in assert_one_line_error(bad, 69)
        assert proc.poll() is None
    assert proc.returncode == 0  # SIGTERM is a clean shutdown
    text = log.read_text()
    assert '"serving"' in text and "probed 127.0.0.1" in text
    assert "Traceback" not in text
    assert_no_secret(text, seed)
    for b in bodies:
        assert_no_secret(b.decode(), seed)


def test_serve_init_generates_a_key_once(tmp_path: Path) -> None:
    d = tmp_path / "fresh"
    with serving(d, tmp_path / "serve.log", "--init") as (base, _):
        assert stat.S_IMODE((d / "notary.key").stat().st_mode) == 0o600
        seed = seed_of(d)
        pub = (d / "notary.pub").read_text().strip()
    with serving(d, tmp_path / "serve.log", "--init") as (base, _):
        assert seed_of(d) == seed  # not regenerated
        with urllib.request.urlopen(base + "/healthz", timeout=10) as r:
            assert json.loads(r.read())["key_id"] == VerifyKey.from_b64(pub).key_id
    text = (tmp_path / "serve.log").read_text()
    assert text.count("generated a new notary key") == 1
    assert_no_secret(text, seed)


def test_notary_info_for_a_notary_that_is_down_exits_69(tmp_path: Path) -> None:
    port = free_port()  # nothing listens here
    p = run("notary-info", f"http://127.0.0.1:{port}", "--timeout", "5")
    line = assert_one_line_error(p, 69)
    assert f"127.0.0.1:{port}" in line
    assert p.stdout == ""


def test_serve_on_a_busy_port_exits_74_with_one_line(keyed: tuple[Path, dict[str, Any]]) -> None:
    d, _ = keyed
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = assert_one_line_error(run("serve", "--region", "test", "--data-dir", str(d), "--listen", f"127.0.0.1:{port}"), 74)
    assert "address already in use" in line


def test_serve_with_a_corrupt_store_exits_74_promptly(keyed: tuple[Path, dict[str, Any]]) -> None:
    d, _ = keyed
    (d / "observations.sqlite3").write_bytes(b"\x00garbage, not SQLite" * 200)
    # Before the fix the process printed the error and then never exited.
    p = run("serve", "--region", "test", "--data-dir", str(d), "--listen", f"127.0.0.1:{free_port()}", timeout=30)
    line = assert_one_line_error(p, 74)
    assert "observation store" in line


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_on_port_0_advertises_the_port_actually_bound(
        keyed: tuple[Path, dict[str, Any]], tmp_path: Path, workers: str) -> None:
    """Review 2, finding 6: ``--listen 127.0.0.1:0`` without ``--url`` named port 0 everywhere."""
    d, generated = keyed
    log = tmp_path / "serve.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [*PARALLAX, "serve", "--region", "test", "--data-dir", str(d), "--listen", "127.0.0.1:0",
             "--workers", workers], stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        started = json.loads(proc.stdout.readline())
        port = int(started["listening"].rpartition(":")[2])
        assert port != 0
        base = f"http://127.0.0.1:{port}"
        assert started["serving"] == base
        wait_healthy(base, proc, log)
        assert json.loads((d / "identity.json").read_text())["url"] == base
        with urllib.request.urlopen(base + "/v1/notary", timeout=10) as r:
            ident = verify_identity(json.loads(r.read()), VerifyKey.from_b64(generated["public_key"]))
        assert ident.url == base
    finally:
        stop(proc)
        if proc.stdout is not None:
            proc.stdout.close()
