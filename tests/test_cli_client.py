"""``parallax check`` as a real process against ``parallax cluster`` running as a real process.

The cluster's notaries resolve ``localhost`` with the system resolver, which may answer
``::1`` as well as ``127.0.0.1``, and they probe every address (``all_addresses``).  So
the test site listens on 127.0.0.1 and, when the machine has IPv6 loopback, on ::1 at the
same port with the same certificate: whatever the resolver answers, every address serves
the same key.  (Were ::1 unavailable it would be refused, and a notary that could not
observe one address still agrees on the others: the CDN rule.)  The client's own probe is
pinned to 127.0.0.1 with ``--connect-to``, like curl.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest

from client.devtools import TLSSite, interceptor, make_cert_context, tls_site
from notary.core import SigningKey, pin_from_spki_hex, spki_sha256
from tests.support.proc import stop

PARALLAX = [sys.executable, "-c", "from client.cli import run_main; run_main()"]
HOST = "localhost"


@pytest.fixture(scope="module")
def cluster_bundle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``parallax cluster --notaries 3`` in the background; yields the bundle path it prints."""
    data = tmp_path_factory.mktemp("cluster")
    log = open(data / "stderr.log", "wb")
    proc = subprocess.Popen([*PARALLAX, "cluster", "--notaries", "3", "--data-dir", str(data / "d")],
                            stdout=subprocess.PIPE, stderr=log)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline().decode().strip() if ready else ""
        assert line, f"cluster did not start: {(data / 'stderr.log').read_text()}"
        path = Path(line)
        assert path.exists() and len(json.loads(path.read_text())["notaries"]) == 3
        yield path
    finally:
        stop(proc)
        log.close()


@pytest.fixture(scope="module")
def site_ctx() -> ssl.SSLContext:
    return make_cert_context(HOST, org="Parallax CLI test site")


@pytest.fixture(scope="module")
def forged_ctx() -> ssl.SSLContext:
    return make_cert_context(HOST, org="Interceptor CA")


@contextlib.asynccontextmanager
async def dual_stack_site(ctx: ssl.SSLContext) -> AsyncIterator[TLSSite]:
    async with contextlib.AsyncExitStack() as stack:
        site = await stack.enter_async_context(tls_site(ctx, host="127.0.0.1"))
        with contextlib.suppress(OSError):
            await stack.enter_async_context(tls_site(ctx, host="::1", port=site.port))
        yield site


@pytest.fixture
async def site(site_ctx) -> AsyncIterator[TLSSite]:
    async with dual_stack_site(site_ctx) as s:
        yield s


async def pin_of(port: int) -> str:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    _, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=HOST)
    der = w.get_extra_info("ssl_object").getpeercert(binary_form=True)
    w.close()
    return pin_from_spki_hex(spki_sha256(der))


async def parallax(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    """Run the CLI as a real process while this event loop keeps serving the site."""
    proc = await asyncio.create_subprocess_exec(*PARALLAX, *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def check_args(port: int, bundle: Path, to_port: int | None = None) -> list[str]:
    return ["check", f"{HOST}:{port}", "--bundle", str(bundle), "--connect-to",
            f"{HOST}:{port}:127.0.0.1:{to_port or port}", "--wait-all", "--timeout", "5"]


def one_line_no_traceback(err: str) -> None:
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


# -- verdicts -------------------------------------------------------------------------------------

async def test_check_table_exit_0(site, cluster_bundle) -> None:
    code, out, err = await parallax(*check_args(site.port, cluster_bundle))
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0].startswith(f"target  {HOST}:{site.port}")
    assert lines[1].split() == ["NOTARY", "REGION", "SAW", "RESULT", "AGE"]
    rows = [line.split() for line in lines[2:5]]
    assert [r[0] for r in rows] == ["notary-1", "notary-2", "notary-3"] and all(r[3] == "agrees" for r in rows)
    assert "verdict: consistent (3/3, policy mpic, 2 needed)" in out


async def test_check_json(site, cluster_bundle) -> None:
    code, out, err = await parallax(*check_args(site.port, cluster_bundle), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["status"] == "consistent" and doc["asked"] == 3 and doc["agreeing"] == 3
    assert doc["pin"] == await pin_of(site.port)
    assert doc["host"] == HOST and doc["port"] == site.port
    assert [r["result"] for r in doc["results"]] == ["agrees"] * 3


async def test_check_custom_policy_values(site, cluster_bundle) -> None:
    code, out, err = await parallax(*check_args(site.port, cluster_bundle), "--json", "--policy", "majority",
                                    "--quorum-fraction", "1.0", "--wait-all")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["policy"] == "majority+custom" and doc["required"] == 3 and doc["status"] == "consistent"


async def test_check_pin_only_when_consistent(site, cluster_bundle, forged_ctx) -> None:
    code, out, err = await parallax(*check_args(site.port, cluster_bundle), "--pin")
    assert code == 0 and out == await pin_of(site.port) + "\n" and err == ""
    async with interceptor(forged_ctx, ("127.0.0.1", site.port), sni=HOST) as mitm:
        code, out, err = await parallax(*check_args(site.port, cluster_bundle, mitm.port), "--pin")
    assert code == 1 and out == ""
    assert "no pin" in err and "sha256/" in err  # the summary names the pins; stdout stays empty
    one_line_no_traceback(err)


async def test_check_interception_exit_1(site, cluster_bundle, forged_ctx) -> None:
    async with interceptor(forged_ctx, ("127.0.0.1", site.port), sni=HOST) as mitm:
        code, out, err = await parallax(*check_args(site.port, cluster_bundle, mitm.port), "--json")
    assert code == 1, out + err
    doc = json.loads(out)
    assert doc["status"] == "mitm_suspected" and doc["pin"] is None
    assert doc["quorum_pins"] == [await pin_of(site.port)]
    assert doc["client"]["pin"] != doc["quorum_pins"][0]


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_all_notaries_unreachable_exit_2(site, tmp_path) -> None:
    entries = []
    for i in range(3):
        k = SigningKey.generate()
        entries.append({"name": f"dead-{i}", "url": f"http://127.0.0.1:{dead_port()}", "region": f"r{i}",
                        "key_id": k.key_id, "public_key": k.verify_key.b64})
    bundle = tmp_path / "dead.json"
    bundle.write_text(json.dumps({"version": 1, "notaries": entries}))
    code, out, err = await parallax(*check_args(site.port, bundle), "--json")
    assert code == 2, out + err
    doc = json.loads(out)
    assert doc["status"] == "insufficient" and doc["agreeing"] == 0 and doc["asked"] == 3
    assert doc["client"]["status"] == "ok"  # the client itself reached the site
    assert [r["result"] for r in doc["results"]] == ["unreachable"] * 3
    code, out, _ = await parallax(*check_args(site.port, bundle))
    assert code == 2 and "verdict: insufficient" in out


# -- usage errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [[f"{HOST}:99999"], [f"{HOST}:abc"], [f"{HOST}:-1"],
                                  [f"{HOST}:443", "--connect-to", f"{HOST}:443:127.0.0.1:99999"]])
async def test_bad_port_is_a_usage_error(args, cluster_bundle) -> None:
    code, out, err = await parallax("check", *args, "--bundle", str(cluster_bundle))
    assert code == 64 and out == ""
    one_line_no_traceback(err)
    assert "internal error" not in err


async def test_port_zero_is_a_usage_error(cluster_bundle) -> None:
    code, out, err = await parallax("check", f"{HOST}:0", "--bundle", str(cluster_bundle))
    assert code == 64 and out == ""
    one_line_no_traceback(err)


@pytest.mark.parametrize(("args", "codes", "needle"), [
    (["--policy", "bogus"], (64,), "invalid choice"),
    (["--connect-to", "nonsense"], (64,), "HOST:PORT:ADDR:PORT"),
    (["--connect-to", "other.example:443:127.0.0.1:1"], (64,), "does not name the target"),
    (["--observed", "/nonexistent/cert.pem"], (66,), "no such file"),
    (["--operator-key", "not-a-key"], (64,), "operator-key"),
])
async def test_bad_usage_one_line(args, codes, needle, cluster_bundle) -> None:
    code, out, err = await parallax("check", f"{HOST}:443", "--bundle", str(cluster_bundle), *args)
    assert code in codes and out == "", (code, out, err)
    one_line_no_traceback(err)
    assert needle in err


async def test_connect_to_host_is_compared_after_normalisation(site, cluster_bundle) -> None:
    """``--connect-to`` names the target as typed (any case, trailing dot): it is normalised
    like the target itself before the two are compared."""
    args = check_args(site.port, cluster_bundle)
    args[args.index("--connect-to") + 1] = f"LocalHost.:{site.port}:127.0.0.1:{site.port}"
    code, out, err = await parallax(*args)
    assert code == 0, out + err
    assert "verdict: consistent" in out


async def test_missing_bundle_file(tmp_path) -> None:
    code, out, err = await parallax("check", f"{HOST}:443", "--bundle", str(tmp_path / "missing.json"))
    assert code == 66 and out == ""  # README: 66, an input file does not exist
    one_line_no_traceback(err)
    assert "missing.json" in err


async def test_malformed_bundle_file(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1, "notaries": [{"name": "x"}]}')
    code, out, err = await parallax("check", f"{HOST}:443", "--bundle", str(bad))
    assert code == 65 and out == ""  # README: 65, malformed bundle
    one_line_no_traceback(err)
