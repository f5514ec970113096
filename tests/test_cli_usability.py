"""The command line as a first-time user meets it (issue 12).

Help and version, logging options anywhere, targets as people paste them (CLI and
API), many targets at once, a closed pipe, notary-info without a scheme, cluster
and demo messages, encrypted operator keys, ``bundle fetch``, the table's policy
line and the README's exit codes.  Processes are real (``parallax`` as a
subprocess against ``parallax cluster`` and TLS sites on loopback) except where
``main()`` is called directly for pure argument handling.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import select
import socket
import subprocess
import sys
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest
from aiohttp import web

import notary
from client.cli import main, make_parser
from client.cli._check import policy_line, render_table, worst_exit_code
from client.cli._help import EXIT_CODES, iter_parsers, setup_logging
from client.devtools import TLSSite, make_cert_context, tls_site
from client.policy import PRESETS
from client.verdict import ClientView, NotaryResult, conclude
from notary.core import SigningKey, TARGET_FORMS, split_target
from notary.errors import InputError
from tests.support.proc import stop

ROOT = Path(__file__).resolve().parent.parent
PARALLAX = [sys.executable, "-c", "from client.cli import run_main; run_main()"]
HOST = "localhost"
PASS = "operator passphrase 1"
STATE_DIR = ""  # set per module below: never the user's own bundle-version state


@pytest.fixture(autouse=True, scope="module")
def _own_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    global STATE_DIR
    STATE_DIR = str(tmp_path_factory.mktemp("state"))
    yield


def clean_env(extra: dict[str, str] | None) -> dict[str, str]:
    """This process's environment without the variables these tests set themselves."""
    base = {k: v for k, v in os.environ.items() if k not in ("PARALLAX_BUNDLE", "PARALLAX_KEY_PASSPHRASE", "PARALLAX_LOG")}
    return {**base, "PARALLAX_STATE_DIR": STATE_DIR, **(extra or {})}


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60,
            stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PARALLAX, *args], capture_output=True, text=True, timeout=timeout,
                          env=clean_env(env), stdin=stdin)


async def parallax(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, str, str]:
    """Run the CLI as a real process while this event loop keeps serving sites."""
    proc = await asyncio.create_subprocess_exec(*PARALLAX, *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
                                                env=clean_env(env))
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def one_line(err: str) -> str:
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    return err.strip()


# -- help, version, exit codes --------------------------------------------------------------------

def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"parallax {notary.__version__}\n"


def test_help_lists_exit_codes_and_returns_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for code, _ in EXIT_CODES:
        assert re.search(rf"^\s+{code}\s+\S", out, re.M), code


def test_every_option_has_help_and_every_command_examples() -> None:
    missing, no_examples = [], []
    for path, p in iter_parsers(make_parser()):
        for a in p._actions:
            if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not a.help or a.help == argparse.SUPPRESS:
                missing.append(f"{path} {a.option_strings or a.dest}")
        leaf = not any(isinstance(a, argparse._SubParsersAction) for a in p._actions)
        if path and leaf and not (p.epilog or "").startswith("examples:\n  "):
            no_examples.append(path)
        elif path and leaf and not 1 <= len(re.findall(r"^  \S", p.epilog or "", re.M)) <= 2:
            no_examples.append(f"{path} (not 1-2 examples)")
    assert missing == [] and no_examples == []


def test_help_shows_defaults_and_policy_meanings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 10.0)" in out and "(default: mpic)" in out and "(default: 4)" in out
    for name in PRESETS:
        assert f"{name}:" in out
    assert "examples: parallax check https://example.com:8443/login" in out
    assert main(["serve", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 127.0.0.1:8443)" in out and "(default: 300)" in out


def test_readme_exit_code_table_matches_the_cli() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Exit codes of `parallax`", 1)[1].split("\n\n", 2)[1]
    rows = [line for line in section.splitlines() if re.match(r"^\| \d+ \|", line)]
    documented = [int(line.split("|")[1]) for line in rows]
    assert documented == [code for code, _ in EXIT_CODES]


def test_documented_usage_exit_code_is_real(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--no-such-flag"]) == 64
    assert "unrecognized arguments: --no-such-flag" in one_line(capsys.readouterr().err)
    assert main(["keygen"]) == 64  # --data-dir is required
    assert "--data-dir" in one_line(capsys.readouterr().err)


# -- logging options ------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["check", "example.com", "--log-level", "debug"],
    ["--log-level", "debug", "check", "example.com"],
    ["check", "--log-level=DEBUG", "example.com"],
])
def test_log_level_anywhere(argv: list[str]) -> None:
    args = make_parser().parse_args(argv)
    assert args.log_level == "debug" and args.targets == ["example.com"]


def test_verbose_and_quiet_anywhere() -> None:
    assert make_parser().parse_args(["check", "a.example", "-vv"]).verbose == 2
    assert make_parser().parse_args(["-v", "bundle", "show"]).verbose == 1
    assert make_parser().parse_args(["bundle", "show", "-q"]).quiet is True


def test_invalid_log_level_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "example.com", "--log-level", "chatty"]) == 64
    err = one_line(capsys.readouterr().err)
    assert "invalid log level 'chatty'" in err and "debug" in err


def test_json_log_format(capsys: pytest.CaptureFixture[str]) -> None:
    args = make_parser().parse_args(["--log-format", "json", "-v", "check", "x.example"])
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    try:
        setup_logging(args, None)
        logging.getLogger("parallax.test").info("hello %s", "operator")
        logging.getLogger("parallax.test").debug("not shown at -v")
    finally:
        for h in list(root.handlers):
            if h not in before[0]:
                root.removeHandler(h)
        root.setLevel(before[1])
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert [(d["level"], d["logger"], d["message"]) for d in lines] == [("info", "parallax.test", "hello operator")]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", lines[0]["time"])


# -- targets as people paste them -----------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("example.com", ("example.com", 443)),
    ("Example.COM:8443", ("example.com", 8443)),
    ("https://example.com:8443/login?next=/#top", ("example.com", 8443)),
    ("https://example.com", ("example.com", 443)),
    ("example.com/login", ("example.com", 443)),
    ("bücher.example", ("xn--bcher-kva.example", 443)),
    ("https://bücher.example:444/", ("xn--bcher-kva.example", 444)),
    ("[2001:db8::1]:8443", ("2001:db8::1", 8443)),
    ("[2001:db8::1]", ("2001:db8::1", 443)),
    ("2001:db8::1", ("2001:db8::1", 443)),
    ("192.0.2.1:443", ("192.0.2.1", 443)),
])
def test_split_target_accepts(text: str, expected: tuple[str, int]) -> None:
    assert split_target(text) == expected


@pytest.mark.parametrize("text", ["http://example.com", "ftp://example.com", "example.com:", "example.com:0",
                                  "example.com:99999", "example.com:https", "[2001:db8::1", "[nothex]:443",
                                  "https://user@example.com/", "", "exa mple.com"])
def test_split_target_refuses_and_says_what_is_accepted(text: str) -> None:
    with pytest.raises(InputError) as exc:
        split_target(text)
    assert exc.value.code == "bad_target" and TARGET_FORMS in str(exc.value)


def test_bad_target_on_the_command_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bundle = tmp_path / "b.json"
    bundle.write_text(json.dumps({"version": 1, "notaries": []}))
    assert main(["check", "http://example.com", "--bundle", str(bundle)]) == 64
    err = one_line(capsys.readouterr().err)
    assert "only https://" in err and TARGET_FORMS in err


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dead_bundle(tmp_path: Path, n: int = 2) -> Path:
    entries = []
    for i in range(n):
        k = SigningKey.generate()
        entries.append({"name": f"dead-{i}", "url": f"http://127.0.0.1:{dead_port()}", "region": f"r{i}",
                        "key_id": k.key_id, "public_key": k.verify_key.b64})
    path = tmp_path / "dead.json"
    path.write_text(json.dumps({"version": 1, "notaries": entries}))
    return path


@pytest.fixture
async def v4_site() -> AsyncIterator[TLSSite]:
    async with tls_site(make_cert_context(HOST, org="Parallax usability test"), host="127.0.0.1") as s:
        yield s


async def test_verify_with_notaries_takes_pasted_targets(v4_site: TLSSite, tmp_path: Path) -> None:
    from client.api import verify_with_notaries

    bundle = str(dead_bundle(tmp_path))
    for text in (f"127.0.0.1:{v4_site.port}", f"https://127.0.0.1:{v4_site.port}/some/path"):
        v = await verify_with_notaries(text, bundle=bundle, timeout=5)
        assert (v.host, v.port) == ("127.0.0.1", v4_site.port)
        assert v.client.status == "ok"  # the client reached the site at the parsed port
    v = await verify_with_notaries("127.0.0.1", v4_site.port, bundle=bundle, timeout=5)
    assert (v.host, v.port, v.client.status) == ("127.0.0.1", v4_site.port, "ok")
    with pytest.raises(InputError, match="two ports"):
        await verify_with_notaries(f"127.0.0.1:{v4_site.port}", v4_site.port + 1, bundle=bundle)
    with pytest.raises(InputError) as exc:
        await verify_with_notaries("http://127.0.0.1/", bundle=bundle)
    assert exc.value.code == "bad_target"


# -- a real cluster for the many-targets checks ---------------------------------------------------

@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """``parallax cluster --notaries 3``; yields the bundle path and the first stderr lines."""
    data = tmp_path_factory.mktemp("cluster")
    log = open(data / "stderr.log", "wb")
    proc = subprocess.Popen([*PARALLAX, "cluster", "--notaries", "3", "--data-dir", str(data / "d")],
                            stdout=subprocess.PIPE, stderr=log)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline().decode().strip() if ready else ""
        assert line, (data / "stderr.log").read_text()
        for _ in range(50):  # the foreground notice follows the bundle path on stderr
            if "Ctrl-C" in (data / "stderr.log").read_text():
                break
            select.select([], [], [], 0.1)
        yield Path(line), (data / "stderr.log").read_text()
    finally:
        stop(proc)
        log.close()


def test_cluster_says_it_runs_in_the_foreground(cluster: tuple[Path, str]) -> None:
    assert "running in the foreground; Ctrl-C stops it" in cluster[1]


@pytest.mark.parametrize("n", ["0", "-2"])
def test_cluster_needs_at_least_one_notary(n: str, tmp_path: Path) -> None:
    r = run_cli("cluster", "--notaries", n, "--data-dir", str(tmp_path / "c"))
    assert r.returncode == 64 and "at least 1" in one_line(r.stderr)
    assert not (tmp_path / "c").exists()


@contextlib.asynccontextmanager
async def dual_stack_site() -> AsyncIterator[TLSSite]:
    """A site on 127.0.0.1 and, where available, ::1 at the same port: 'localhost' means either."""
    ctx = make_cert_context(HOST, org="Parallax usability test")
    async with contextlib.AsyncExitStack() as stack:
        site = await stack.enter_async_context(tls_site(ctx, host="127.0.0.1"))
        with contextlib.suppress(OSError):
            await stack.enter_async_context(tls_site(ctx, host="::1", port=site.port))
        yield site


async def test_many_targets_json_lines_in_order_and_worst_exit(cluster: tuple[Path, str], tmp_path: Path) -> None:
    bundle = str(cluster[0])
    async with dual_stack_site() as a, dual_stack_site() as b:
        dead = dead_port()
        code, out, err = await parallax("check", f"{HOST}:{a.port}", f"https://{HOST}:{b.port}/x", "--bundle", bundle,
                                        "--json", "--wait-all", "--timeout", "5")
        assert code == 0, out + err
        docs = [json.loads(line) for line in out.splitlines()]
        assert [(d["port"], d["status"]) for d in docs] == [(a.port, "consistent"), (b.port, "consistent")]
        assert err == ""  # no progress line when stderr is not a terminal

        hosts = tmp_path / "hosts.txt"
        hosts.write_text(f"# my sites\n\n{HOST}:{a.port}   # the first\n127.0.0.1:{dead}\n")
        code, out, err = await parallax("check", "--hosts-file", str(hosts), "--bundle", bundle, "--wait-all",
                                        "--timeout", "5")
        assert code == 2, out + err  # the worst verdict: one target is unreachable
        assert out.splitlines()[0].split() == ["TARGET", "VERDICT", "AGREE", "NEEDED", "YOUR", "KEY"]
        rows = [line.split() for line in out.splitlines()[1:3]]
        assert [(r[0], r[1]) for r in rows] == [(f"{HOST}:{a.port}", "consistent"), (f"127.0.0.1:{dead}", "unreachable")]
        assert "2 targets: 1 consistent, 1 unreachable" in out
        assert err == ""


async def test_progress_line_only_on_a_terminal(cluster: tuple[Path, str]) -> None:
    import pty
    import threading

    master, slave = pty.openpty()  # stderr is a real terminal here; stdout stays a pipe
    seen = bytearray()

    def drain() -> None:  # read while the child writes: a closed terminal's pending data may be dropped
        with contextlib.suppress(OSError):  # EIO once the child's side is closed
            while chunk := os.read(master, 65536):
                seen.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    async with dual_stack_site() as a, dual_stack_site() as b:
        proc = await asyncio.create_subprocess_exec(
            *PARALLAX, "check", f"{HOST}:{a.port}", f"{HOST}:{b.port}", "--bundle", str(cluster[0]),
            "--timeout", "5", stdout=asyncio.subprocess.PIPE, stderr=slave, stdin=asyncio.subprocess.DEVNULL,
            env=clean_env(None))
        os.close(slave)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    reader.join(10)
    os.close(master)
    assert proc.returncode == 0, out
    assert b"checked 1/2" in seen and b"checked 2/2" in seen
    assert b"checked" not in out  # the progress never reaches stdout
    assert b"2 targets: 2 consistent" in out


def test_worst_exit_code() -> None:
    assert worst_exit_code([0, 0]) == 0
    assert worst_exit_code([0, 2, 0]) == 2
    assert worst_exit_code([2, 1, 0]) == 1  # mitm_suspected outranks everything


async def test_one_target_only_flags_refused_with_many(cluster: tuple[Path, str]) -> None:
    code, out, err = await parallax("check", "a.example", "b.example", "--pin", "--bundle", str(cluster[0]))
    assert code == 64 and out == "" and "--pin needs exactly one target" in one_line(err)
    code, _, err = await parallax("check", "--bundle", str(cluster[0]))
    assert code == 64 and "no target given" in one_line(err)
    code, _, err = await parallax("check", "--hosts-file", "/nonexistent/hosts", "--bundle", str(cluster[0]))
    assert code == 66 and "no such file" in one_line(err)


async def test_closed_pipe_ends_quietly(cluster: tuple[Path, str]) -> None:
    async with dual_stack_site() as a:
        r_fd, w_fd = os.pipe()
        os.close(r_fd)  # the reader is gone before anything is written (like '| head -0')
        proc = await asyncio.create_subprocess_exec(
            *PARALLAX, "check", f"{HOST}:{a.port}", f"{HOST}:{a.port}/again", "127.0.0.1:1", "--json",
            "--bundle", str(cluster[0]), "--timeout", "5",
            stdout=w_fd, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
        os.close(w_fd)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert err.decode() == ""
    assert proc.returncode == 141


def test_closed_pipe_on_buffered_output_ends_quietly(tmp_path: Path) -> None:
    # Output small enough to sit in stdout's buffer meets the closed pipe at the final flush.
    bundle = dead_bundle(tmp_path)
    r_fd, w_fd = os.pipe()
    os.close(r_fd)
    proc = subprocess.run([*PARALLAX, "bundle", "show", str(bundle)], stdout=w_fd, stderr=subprocess.PIPE,
                          timeout=30, env=clean_env(None))
    os.close(w_fd)
    assert proc.stderr == b"" and proc.returncode == 141


# -- notary-info, demo ----------------------------------------------------------------------------

def test_notary_info_without_scheme_says_add_http(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["notary-info", "127.0.0.1:18441"]) == 64
    err = one_line(capsys.readouterr().err)
    assert "add http://" in err and "http://127.0.0.1:18441" in err


def test_demo_prints_verdicts_first_and_cleans_up(tmp_path: Path) -> None:
    env = {"TMPDIR": str(tmp_path)}
    r = run_cli("demo", env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert out.index("== check 1") < out.index("== check 2") < out.index("== observation by")
    assert '"nonce"' not in out and "parallax demo --verbose" in out
    assert list(tmp_path.iterdir()) == []  # the temporary data dir is gone
    r = run_cli("demo", "--verbose", env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.index("== check 2") < r.stdout.index('"nonce"')
    assert list(tmp_path.iterdir()) == []


# -- the table ------------------------------------------------------------------------------------

PIN_A = "sha256/" + "A" * 43 + "="
CLIENT = ClientView("ok", "ab" * 32, "127.0.0.1", None, "probe")


def test_table_explains_policy_and_needed() -> None:
    results = [NotaryResult(f"n{i}", f"r{i}", f"k{i}", "agrees", "saw the same key", counted=True, pins=(PIN_A,))
               for i in range(3)]
    v = conclude(CLIENT, results, PRESETS["mpic"], 1000, host="a.example", port=443)
    table = render_table(v)
    assert "verdict: consistent (3/3, policy mpic, 2 needed)" in table
    assert table.splitlines()[-1] == policy_line(v)
    assert "policy mpic: n-1 of n" in policy_line(v) and '"2 needed": of the 3 notaries asked' in policy_line(v)
    assert v.quorum_pins == (v.pin,)  # a consistent verdict names the key the quorum saw


def test_empty_bundle_says_one_number() -> None:
    v = conclude(CLIENT, [], PRESETS["mpic"], 1000, host="a.example", port=443)
    table = render_table(v)
    assert v.status == "insufficient" and "needs at least 2" in v.summary
    assert "2 needed" in table and "1 needed" not in table


def test_uncounted_agreement_is_explained_in_the_summary() -> None:
    policy = PRESETS["perspectives"].with_overrides(name="perspectives+custom", quorum_duration=86400)
    results = [NotaryResult(f"n{i}", f"r{i}", f"k{i}", "agrees",
                            "saw the same key, but only for 5s (< quorum duration 86400s)", counted=False, pins=(PIN_A,))
               for i in range(3)]
    v = conclude(CLIENT, results, policy, 1000, host="a.example", port=443)
    table = render_table(v)
    assert v.status == "insufficient"
    assert "0/3 notaries gave answers that count" in v.summary and "3 saw your key" in v.summary
    assert table.count("agrees (not counted)") == 3 and table.count("quorum duration 86400s") == 3
    assert "(with custom values)" in table


# -- keys and bundles -----------------------------------------------------------------------------

def test_keygen_encrypt_and_sign_with_passphrase(tmp_path: Path) -> None:
    op = tmp_path / "op"
    r = run_cli("keygen", "--encrypt", "--data-dir", str(op))
    assert r.returncode == 64 and "PARALLAX_KEY_PASSPHRASE" in one_line(r.stderr)  # no terminal, no variable
    assert not (op / "operator.pem").exists()
    r = run_cli("keygen", "--encrypt", "--data-dir", str(op), env={"PARALLAX_KEY_PASSPHRASE": PASS})
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert (op / "operator.pem").stat().st_mode & 0o777 == 0o600 and not (op / "notary.key").exists()
    assert (op / "operator.pub").read_text().strip() == info["public_key"]
    r = run_cli("keygen", "--operator", "--data-dir", str(op), env={"PARALLAX_KEY_PASSPHRASE": PASS})
    assert r.returncode == 73  # never overwritten

    bundle = dead_bundle(tmp_path)
    sign = ("bundle", "sign", "--version", "1", "--valid-for", "30")
    r = run_cli(*sign, "--key-dir", str(op), str(bundle), env={"PARALLAX_KEY_PASSPHRASE": "wrong passphrase"})
    assert r.returncode == 78 and "wrong passphrase" in one_line(r.stderr) and r.stdout == ""
    r = run_cli(*sign, "--key-dir", str(op), str(bundle), "-o", str(tmp_path / "signed.json"),
                env={"PARALLAX_KEY_PASSPHRASE": PASS})
    assert r.returncode == 0, r.stderr
    r = run_cli("bundle", "show", str(tmp_path / "signed.json"), "--operator-key", info["public_key"])
    assert r.returncode == 0 and f"signed by {info['key_id']}" in r.stdout
    r = run_cli(*sign, "--key", str(op / "operator.pem"), str(bundle), env={"PARALLAX_KEY_PASSPHRASE": PASS})
    assert r.returncode == 0 and json.loads(r.stdout)["signatures"][0]["keyid"] == info["key_id"]


def _signed_bundle(tmp_path: Path) -> tuple[bytes, str]:
    op = tmp_path / "op"
    env = {"PARALLAX_KEY_PASSPHRASE": PASS}
    pub = json.loads(run_cli("keygen", "--encrypt", "--data-dir", str(op), env=env).stdout)["public_key"]
    r = run_cli("bundle", "sign", "--version", "1", "--valid-for", "30", "--key-dir", str(op), str(dead_bundle(tmp_path, 3)), env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout.encode(), pub


@pytest.fixture
async def bundle_server(tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    """A real HTTP server on loopback publishing a signed bundle (and some bad answers)."""
    signed, pub = _signed_bundle(tmp_path)

    async def ok(_: web.Request) -> web.Response:
        return web.Response(body=signed, content_type="application/json")

    async def redirect(_: web.Request) -> web.Response:
        raise web.HTTPFound("/bundle.json")

    async def huge(_: web.Request) -> web.Response:
        return web.Response(body=b" " * (2 << 20), content_type="application/json")

    async def missing(_: web.Request) -> web.Response:
        return web.Response(status=404)

    app = web.Application()
    app.router.add_get("/bundle.json", ok)
    app.router.add_get("/moved.json", redirect)
    app.router.add_get("/huge.json", huge)
    app.router.add_get("/missing.json", missing)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", pub
    finally:
        await runner.cleanup()


async def test_bundle_fetch_verifies_and_installs(bundle_server: tuple[str, str], tmp_path: Path) -> None:
    base, pub = bundle_server
    cfg = tmp_path / "cfg"
    os_env = {"XDG_CONFIG_HOME": str(cfg)}
    installed = cfg / "parallax" / "bundle.json"

    other = SigningKey.generate().verify_key.b64
    code, out, err = await parallax("bundle", "fetch", f"{base}/bundle.json", "--operator-key", other, env=os_env)
    assert code == 65 and not installed.exists()  # signed, but not by the key we trust
    one_line(err)
    code, _, err = await parallax("bundle", "fetch", f"{base}/bundle.json", env=os_env)
    assert code == 64 and "--operator-key is required" in one_line(err)
    code, _, err = await parallax("bundle", "fetch", f"{base}/moved.json", "--operator-key", pub, env=os_env)
    assert code == 69 and "redirects are not followed" in one_line(err) and not installed.exists()
    code, _, err = await parallax("bundle", "fetch", f"{base}/huge.json", "--operator-key", pub, env=os_env)
    assert code == 69 and "larger than" in one_line(err) and not installed.exists()
    code, _, err = await parallax("bundle", "fetch", f"{base}/missing.json", "--operator-key", pub, env=os_env)
    assert code == 69 and "HTTP 404" in one_line(err)

    code, out, err = await parallax("bundle", "fetch", f"{base}/bundle.json", "--operator-key", pub, env=os_env)
    assert code == 0, err
    assert installed.exists() and f"at {installed}" in out and "installed 3 notaries" in out
    code, out, err = await parallax("bundle", "show", "--operator-key", pub, env=os_env)  # the default location
    assert code == 0, err
    assert err == f"bundle {installed}: 3 notaries\n"
    assert out.splitlines()[0].startswith("signed by ed25519:")
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["dead-0", "dead-1", "dead-2"]


def test_bundle_add_uses_the_default_location(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    k = SigningKey.generate()
    entry = tmp_path / "e.json"
    entry.write_text(json.dumps({"name": "eu", "url": "https://eu.example", "region": "eu", "key_id": k.key_id,
                                 "public_key": k.verify_key.b64}))
    r = run_cli("bundle", "add", str(entry), env=env)
    path = tmp_path / "cfg" / "parallax" / "bundle.json"
    assert r.returncode == 0 and str(path) in r.stdout
    assert [e["name"] for e in json.loads(path.read_text())["notaries"]] == ["eu"]


def test_passphrase_is_never_printed(tmp_path: Path) -> None:
    r = run_cli("keygen", "--encrypt", "--data-dir", str(tmp_path / "op"), "-vv", env={"PARALLAX_KEY_PASSPHRASE": PASS})
    assert r.returncode == 0 and PASS not in r.stdout + r.stderr

