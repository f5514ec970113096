"""``parallax conformance`` against a real notary (passes) and deliberately broken ones (fail, exit 1).

The real notary is ``parallax serve`` in a subprocess on loopback; the target is
a real TLS site on 127.0.0.2 (which the notary is allowed to probe, while
127.0.0.1 stays refused: the refusal checks name 127.0.0.1 and ::ffff:127.0.0.1 on
the port of a listener the conformance run opens itself; no private-range address).  The broken notaries are real notary apps
behind an aiohttp middleware that breaks one thing each: unsigned answers,
answers signed by the wrong key, a nonce not echoed, a 500 on bad input, a
private address probed instead of refused.  Everything runs on loopback.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import pytest
from aiohttp import web

from client.conformance import run_conformance
from client.devtools import make_cert_context, tls_site
from client.cli import main
from notary.config import NotaryConfig
from notary.core import (
    IDENTITY_TYPE,
    AddressPolicy,
    SigningKey,
    Target,
    canonical_encode,
    leaf_bytes,
    observation_digest,
    parse_networks,
    stamp_batch,
    sign_envelope,
)
from notary.server import create_app
from tests.support.proc import stop

pytestmark = pytest.mark.timeout(60)

SITE_HOST = "127.0.0.2"


def _parallax() -> str:
    exe = Path(sys.executable).with_name("parallax")
    return str(exe) if exe.exists() else (shutil.which("parallax") or "parallax")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopThread:
    """An event loop in a thread, to host servers while the test calls the synchronous CLI."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._stack = contextlib.AsyncExitStack()

    def run(self, coro: Awaitable[Any], timeout: float = 20) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def enter(self, cm: contextlib.AbstractAsyncContextManager[Any]) -> Any:
        return self.run(self._stack.enter_async_context(cm))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.run(self._stack.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def bg() -> Iterator[LoopThread]:
    lt = LoopThread()
    try:
        yield lt
    finally:
        lt.close()


@pytest.fixture(scope="module")
def site(bg: LoopThread) -> str:
    s = bg.enter(tls_site(make_cert_context("site.test"), host=SITE_HOST))
    return f"{SITE_HOST}:{s.port}"


@pytest.fixture(scope="module")
def real_notary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``parallax serve`` in a subprocess: may probe 127.0.0.2 (the site), refuses everything else private."""
    data = tmp_path_factory.mktemp("notary")
    port = _free_port()
    log = open(data / "serve.log", "wb")
    proc = subprocess.Popen(
        [_parallax(), "serve", "--data-dir", str(data), "--init", "--listen", f"127.0.0.1:{port}",
         "--name", "conformance-notary", "--region", "test", "--allow-network", f"{SITE_HOST}/32", "--allow-port", "any"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"parallax serve did not start: {(data / 'serve.log').read_text()}")
            time.sleep(0.1)
        yield url
    finally:
        stop(proc)
        log.close()


def _run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = main(["conformance", *argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def _by_name(doc: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {c["name"]: c for c in doc["checks"]}


# -- a real notary passes -------------------------------------------------------------

def test_real_notary_passes(real_notary: str, site: str) -> None:
    """The console script, end to end: every check passes, exit 0, a line per check."""
    proc = subprocess.run([_parallax(), "conformance", real_notary, "--target", site],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    for name in ("identity", "healthz", "openapi", "observe", "observe-get", "freshness", "refuse loopback",
                 "refuse ipv4-mapped", "limit too-many-targets", "limit body-too-large", "limit bad-nonce",
                 "limit bad-json", "ohttp-keys", "ohttp-gateway"):
        assert any(line.startswith("PASS") and f" {name} " in line + " " for line in lines), (name, proc.stdout)
    assert "FAIL" not in proc.stdout
    assert "14 passed, 0 failed, 0 skipped" in proc.stdout
    # The site was really observed: a certificate, not an error status.
    assert any(line.startswith("PASS  observe ") and " ok sha256/" in line for line in lines), proc.stdout


def test_without_target_the_observation_checks_are_skipped(real_notary: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = _run_cli(capsys, real_notary)
    assert code == 0 and doc["ok"]
    checks = _by_name(doc)
    assert checks["observe"]["status"] == "skip" and "--target" in checks["observe"]["detail"]
    assert checks["observe-get"]["status"] == "skip"
    assert checks["freshness"]["status"] == "skip"
    assert checks["refuse ipv4-mapped"]["status"] == "pass"


def test_expected_key_pins_the_notary(real_notary: str, capsys: pytest.CaptureFixture[str]) -> None:
    wrong = SigningKey.generate().verify_key
    code, doc = _run_cli(capsys, real_notary, "--public-key", wrong.b64)
    assert code == 1
    assert _by_name(doc)["identity"]["status"] == "fail"
    assert "expected" in _by_name(doc)["identity"]["detail"]


def test_usage_errors_exit_64(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["conformance", "ftp://example.invalid"]) == 64
    assert main(["conformance", "http://127.0.0.1:1", "--target", "bad host:443"]) == 64
    assert main(["conformance", "http://127.0.0.1:1", "--expect-allowed", "not-a-cidr"]) == 64
    assert main(["conformance", "http://127.0.0.1:1", "--sni", "x.test"]) == 64
    assert main(["conformance"]) == 64
    capsys.readouterr()


def test_unreachable_notary_fails(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = _run_cli(capsys, f"http://127.0.0.1:{_free_port()}", "--timeout", "3")
    assert code == 1
    assert [c["name"] for c in doc["checks"]] == ["identity", "reach"]


# -- in-process notaries: allowed networks and broken servers ------------------------------

Mutator = Callable[[web.Request, web.Response, SigningKey], Awaitable[web.StreamResponse]]


async def _start(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def _notary_app(tmp: Path, key: SigningKey, *, allow: tuple[str, ...] = (SITE_HOST + "/32",),
                mutate: Mutator | None = None) -> web.Application:
    cfg = NotaryConfig(data_dir=tmp, name="broken" if mutate else "inproc", region="test",
                       policy=AddressPolicy(parse_networks(allow), None))
    app = create_app(cfg, key)
    if mutate is not None:
        @web.middleware
        async def breaker(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
            resp = await handler(request)
            assert isinstance(resp, web.Response)
            return await mutate(request, resp, key)
        app.middlewares.insert(0, breaker)
    return app


@contextlib.contextmanager
def _serve(bg: LoopThread, app: web.Application) -> Iterator[str]:
    cm = contextlib.asynccontextmanager(_start)(app)
    url = bg.run(cm.__aenter__())
    try:
        yield url
    finally:
        bg.run(cm.__aexit__(None, None, None))


def _decode(env: dict[str, Any]) -> dict[str, Any]:
    return json.loads(base64.b64decode(env["payload"]))


def _resign(env: dict[str, Any], payload: dict[str, Any], key: SigningKey) -> dict[str, Any]:
    return sign_envelope(env["payloadType"], canonical_encode(payload), key)


def _map_envelopes(doc: dict[str, Any], fn: Callable[[dict[str, Any]], dict[str, Any]],
                   restamp: SigningKey | None = None, nonce: str | None = None) -> dict[str, Any]:
    """Apply ``fn`` to every observation envelope; with ``restamp``, sign a new freshness proof
    that names the new envelopes (and ``nonce`` instead of the request's), so that only the
    mutation is wrong."""
    for result in doc["results"]:
        result["envelopes"] = [fn(e) for e in result["envelopes"]]
        if restamp is not None:
            old = json.loads(base64.b64decode(result["freshness"]["leaf"]))
            digests = [observation_digest(base64.b64decode(e["payload"])) for e in result["envelopes"]]
            leaf = leaf_bytes(nonce or old["nonce"], digests, old["source"])
            signed_at = _decode(result["freshness"]["statement"])["signed_at"]
            [result["freshness"]] = stamp_batch(restamp, signed_at, [leaf])
    return doc


def _json_response(resp: web.Response, doc: Any) -> web.Response:
    return web.json_response(doc, status=resp.status)


async def unsigned(request: web.Request, resp: web.Response, key: SigningKey) -> web.StreamResponse:
    if resp.status != 200 or request.path not in ("/v1/notary", "/v1/observe"):
        return resp
    doc = json.loads(resp.body)  # type: ignore[arg-type]
    if request.path == "/v1/notary":
        doc["signatures"] = []
    else:
        _map_envelopes(doc, lambda e: {**e, "signatures": []})
    return _json_response(resp, doc)


OTHER = SigningKey.generate()


async def identity_wrong_key(request: web.Request, resp: web.Response, key: SigningKey) -> web.StreamResponse:
    """The identity document names the notary's key but is signed by another one."""
    if request.path != "/v1/notary" or resp.status != 200:
        return resp
    doc = json.loads(resp.body)  # type: ignore[arg-type]
    forged = sign_envelope(IDENTITY_TYPE, base64.b64decode(doc["payload"]), OTHER)
    forged["signatures"][0]["keyid"] = key.key_id
    return _json_response(resp, forged)


async def identity_key_id_mismatch(request: web.Request, resp: web.Response, key: SigningKey) -> web.StreamResponse:
    if request.path != "/v1/notary" or resp.status != 200:
        return resp
    doc = json.loads(resp.body)  # type: ignore[arg-type]
    payload = _decode(doc)
    payload["key_id"] = OTHER.key_id
    return _json_response(resp, _resign(doc, payload, key))


async def identity_old_protocol(request: web.Request, resp: web.Response, key: SigningKey) -> web.StreamResponse:
    if request.path != "/v1/notary" or resp.status != 200:
        return resp
    doc = json.loads(resp.body)  # type: ignore[arg-type]
    payload = _decode(doc)
    payload["protocol"] = "parallax/0"
    return _json_response(resp, _resign(doc, payload, key))


async def observations_wrong_key(request: web.Request, resp: web.Response, key: SigningKey) -> web.StreamResponse:
    if not request.path.startswith("/v1/observe") or resp.status != 200:
        return resp
    doc = json.loads(resp.body)  # type: ignore[arg-type]
    return _json_response(resp, _map_envelopes(doc, lambda e: _resign(e, _decode(e), OTHER)))


async def nonce_not_echoed(request: web.Request, resp: web.Response, key: SigningKey) -> web.StreamResponse:
    if not request.path.startswith("/v1/observe") or resp.status != 200:
        return resp
    doc = json.loads(resp.body)  # type: ignore[arg-type]
    return _json_response(resp, _map_envelopes(doc, lambda e: e, restamp=key, nonce="a-stale-nonce-from-before"))


async def freshness_bad_path(request: web.Request, resp: web.Response, key: SigningKey) -> web.StreamResponse:
    """The freshness leaf is not under the signed root (a path hash flipped, or a wrong index)."""
    if not request.path.startswith("/v1/observe") or resp.status != 200:
        return resp
    doc = json.loads(resp.body)  # type: ignore[arg-type]
    for result in doc["results"]:
        f = result["freshness"]
        if f["path"]:
            f["path"][0] = ("0" if f["path"][0][0] != "0" else "1") + f["path"][0][1:]
        else:  # a batch of one: claim another position in a bigger tree
            statement = _decode(f["statement"])
            statement["tree_size"] = 2
            f["statement"] = _resign(f["statement"], statement, key)
            f["index"] = 1
    return _json_response(resp, doc)


async def observation_resigned_per_request(request: web.Request, resp: web.Response, key: SigningKey) -> web.StreamResponse:
    """A notary that swaps in an observation its freshness leaf does not name (stale digest)."""
    if not request.path.startswith("/v1/observe") or resp.status != 200:
        return resp
    doc = json.loads(resp.body)  # type: ignore[arg-type]
    return _json_response(resp, _map_envelopes(doc, lambda e: _resign(e, {**_decode(e), "observed_at": _decode(e)["observed_at"] - 1}, key)))


async def wrong_target(request: web.Request, resp: web.Response, key: SigningKey) -> web.StreamResponse:
    if not request.path.startswith("/v1/observe") or resp.status != 200:
        return resp
    doc = json.loads(resp.body)  # type: ignore[arg-type]

    def swap(e: dict[str, Any]) -> dict[str, Any]:
        p = _decode(e)
        p["target"] = {**p["target"], "port": p["target"]["port"] + 1}
        return _resign(e, p, key)
    return _json_response(resp, _map_envelopes(doc, swap, restamp=key))


async def probes_private(request: web.Request, resp: web.Response, key: SigningKey) -> web.StreamResponse:
    """Claims (correctly signed) to have connected to the private addresses it should refuse."""
    if not request.path.startswith("/v1/observe") or resp.status != 200:
        return resp
    doc = json.loads(resp.body)  # type: ignore[arg-type]

    def unblock(e: dict[str, Any]) -> dict[str, Any]:
        p = _decode(e)
        if p["status"] == "blocked_by_policy":
            p.update(status="refused", detail="connection refused")
        return _resign(e, p, key)
    return _json_response(resp, _map_envelopes(doc, unblock, restamp=key))


async def error_500(request: web.Request, resp: web.Response, key: SigningKey) -> web.StreamResponse:
    if resp.status in (400, 413):
        return web.Response(status=500, text="Internal Server Error\nTraceback (most recent call last): ...")
    return resp


async def error_not_json(request: web.Request, resp: web.Response, key: SigningKey) -> web.StreamResponse:
    if resp.status in (400, 413):
        return web.Response(status=resp.status, text="bad request")
    return resp


async def ohttp_keys_substituted(request: web.Request, resp: web.Response, key: SigningKey) -> web.StreamResponse:
    """Serves gateway keys other than the signed ones (what a substituting relay would do)."""
    if request.method == "GET" and request.path == "/.well-known/ohttp-gateway":
        from notary.core import ohttp
        return web.Response(body=ohttp.encode_keys([ohttp.GatewayKey.generate(0).config]),
                            content_type="application/ohttp-keys")
    return resp


async def ohttp_tamper_accepted(request: web.Request, resp: web.Response, key: SigningKey) -> web.StreamResponse:
    """Answers a failed decapsulation with 200, as if it had been fine."""
    if request.path == "/.well-known/ohttp-gateway" and resp.status == 400:
        return web.Response(status=200, body=b"", content_type="message/ohttp-res")
    return resp


BROKEN: list[tuple[Mutator, set[str]]] = [
    (unsigned, {"identity", "observe", "observe-get", "freshness", "refuse loopback", "refuse ipv4-mapped"}),
    (identity_wrong_key, {"identity", "observe", "refuse ipv4-mapped"}),
    (identity_key_id_mismatch, {"identity"}),
    (identity_old_protocol, {"identity"}),
    (observations_wrong_key, {"observe", "observe-get", "refuse loopback", "refuse ipv4-mapped"}),
    (nonce_not_echoed, {"observe", "observe-get", "freshness", "refuse ipv4-mapped"}),
    (freshness_bad_path, {"observe", "observe-get", "freshness", "refuse loopback", "refuse ipv4-mapped"}),
    (observation_resigned_per_request, {"observe", "observe-get", "freshness", "refuse ipv4-mapped"}),
    (wrong_target, {"observe", "observe-get", "refuse ipv4-mapped"}),
    (probes_private, {"refuse loopback", "refuse ipv4-mapped"}),
    # These two break every 400, the gateway's answer to a tampered encapsulation too.
    (error_500, {"limit too-many-targets", "limit body-too-large", "limit bad-nonce", "limit bad-json", "ohttp-gateway"}),
    (error_not_json, {"limit too-many-targets", "limit bad-nonce", "limit bad-json", "ohttp-gateway"}),
    (ohttp_keys_substituted, {"ohttp-keys"}),
    (ohttp_tamper_accepted, {"ohttp-gateway"}),
]


@pytest.mark.parametrize("mutate, must_fail", BROKEN, ids=[m.__name__ for m, _ in BROKEN])
def test_broken_notary_fails(mutate: Mutator, must_fail: set[str], bg: LoopThread, site: str, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    with _serve(bg, _notary_app(tmp_path, SigningKey.generate(), mutate=mutate)) as url:
        code, doc = _run_cli(capsys, url, "--target", site)
    assert code == 1, doc
    assert not doc["ok"]
    failed = {c["name"] for c in doc["checks"] if c["status"] == "fail"}
    assert must_fail <= failed, (failed, doc)
    # What was not broken still passes: the failures point at the fault.
    if mutate in (error_500, error_not_json):
        assert failed <= must_fail | {"limit body-too-large"}, doc


def test_same_app_unbroken_passes(bg: LoopThread, site: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Control for the broken variants: the in-process app without a breaker passes everything."""
    with _serve(bg, _notary_app(tmp_path, SigningKey.generate())) as url:
        code, doc = _run_cli(capsys, url, "--target", site)
    assert code == 0, doc
    assert all(c["status"] == "pass" for c in doc["checks"]), doc


def test_operator_allowed_network(bg: LoopThread, site: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A notary whose operator allowed 127.0.0.0/8 probes 127.0.0.1: a failure unless --expect-allowed says so.

    It connects only to the conformance run's own listener (issue 8, item 14), which records it.
    """
    with _serve(bg, _notary_app(tmp_path, SigningKey.generate(), allow=("127.0.0.0/8",))) as url:
        code, doc = _run_cli(capsys, url, "--target", site)
        assert code == 1
        for name in ("refuse loopback", "refuse ipv4-mapped"):
            refusal = _by_name(doc)[name]
            assert refusal["status"] == "fail" and "--expect-allowed" in refusal["detail"], refusal
            assert "this run's listener saw 1 connection(s)" in refusal["detail"], refusal
            assert re.search(r":443(?!\d)", refusal["detail"]) is None  # not port 443 (an ephemeral 443xx is fine)

        code, doc = _run_cli(capsys, url, "--target", site, "--expect-allowed", "127.0.0.0/8")
        assert code == 0, doc
        assert "allowed by operator" in _by_name(doc)["refuse loopback"]["detail"]
        assert "allowed by operator" in _by_name(doc)["refuse ipv4-mapped"]["detail"]


async def claims_blocked(request: web.Request, resp: web.Response, key: SigningKey) -> web.StreamResponse:
    """Connects (its operator allowed loopback) but signs blocked_by_policy: a lie only the listener can see."""
    if not request.path.startswith("/v1/observe") or resp.status != 200:
        return resp
    doc = json.loads(resp.body)  # type: ignore[arg-type]

    def block(e: dict[str, Any]) -> dict[str, Any]:
        p = _decode(e)
        if p["target"]["host"] in ("127.0.0.1", "::ffff:7f00:1"):
            p.update(status="blocked_by_policy", detail="blocked (claimed)", chain=[], leaf=None, leaf_sha256=None,
                     spki_sha256=None, pin=None, tls_version=None)
        return _resign(e, p, key)
    return _json_response(resp, _map_envelopes(doc, block, restamp=key))


def test_notary_that_connects_but_claims_refusal_fails(bg: LoopThread, site: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    app = _notary_app(tmp_path, SigningKey.generate(), allow=("127.0.0.0/8",), mutate=claims_blocked)
    with _serve(bg, app) as url:
        code, doc = _run_cli(capsys, url, "--target", site)
    assert code == 1
    for name in ("refuse loopback", "refuse ipv4-mapped"):
        c = _by_name(doc)[name]
        assert c["status"] == "fail" and "connected to this run's listener" in c["detail"], c


def test_conformance_targets_only_its_own_listener(real_notary: str, capsys: pytest.CaptureFixture[str]) -> None:
    """No private-range address and no well-known port in anything the run asks the notary to observe."""
    code, doc = _run_cli(capsys, real_notary)
    assert code == 0, doc
    text = json.dumps(doc)
    # Whole tokens only: this run's own ephemeral port may well be 44307, which
    # is not port 443 (a plain substring check failed on exactly that in CI).
    for bad in (r"(?<![\d.])10\.0\.0\.1(?!\d)", r":443(?!\d)", r"(?<![\d.])192\.168\.", r"(?<![\d.])172\.16\."):
        assert re.search(bad, text) is None, bad
    assert "127.0.0.1:" in _by_name(doc)["refuse loopback"]["detail"]
    assert "[::ffff:7f00:1]:" in _by_name(doc)["refuse ipv4-mapped"]["detail"]


async def test_library_call(bg: LoopThread, site: str, tmp_path: Path) -> None:
    """``run_conformance`` is usable as a library (the lab uses the CLI)."""
    with _serve(bg, _notary_app(tmp_path, SigningKey.generate())) as url:
        host, port = site.split(":")
        results = await run_conformance(url, target=Target.parse(host, int(port)))
    assert [r.status for r in results] == ["pass"] * 14
