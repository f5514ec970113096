"""The opt-in localhost API: a real aiohttp server on 127.0.0.1, real HTTP requests.

It must refuse a foreign Origin, a wrong Host (DNS rebinding), a missing or wrong
token, anything but JSON POST, and never answer with wildcard CORS.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest

from client.helper.httpapi import TOKEN_HEADER, load_or_create_token, start_http
from client.helper.service import HelperConfig, HelperService

TOKEN = "t" * 43
EXT = "chrome-extension://ingiepccbcbldikhoammkmlaakcifpma"


class Api:
    def __init__(self, port: int, session: aiohttp.ClientSession) -> None:
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.session = session

    async def call(self, path: str = "/v1/ping", *, method: str = "POST", headers: dict[str, str] | None = None,
                   body: Any = None, token: str | None = TOKEN, raw: bytes | None = None,
                   content_type: str = "application/json") -> tuple[int, dict[str, str], Any]:
        h = {"Content-Type": content_type}
        if token is not None:
            h[TOKEN_HEADER] = token
        h.update(headers or {})
        data = raw if raw is not None else (json.dumps(body if body is not None else {}).encode() if method == "POST" else None)
        async with self.session.request(method, self.base + path, headers=h, data=data) as r:
            text = await r.text()
            try:
                doc = json.loads(text) if text else None
            except ValueError:
                doc = text
            return r.status, dict(r.headers), doc


async def fake_verify(req: Any, bundle: Any, policy: Any) -> dict[str, Any]:
    return {"status": "consistent", "summary": "fake", "host": req.target.host, "port": req.target.port}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    bundle = tmp_path / "bundle.json"
    bundle.write_text(json.dumps({"version": 1, "notaries": []}))
    service = HelperService(HelperConfig(bundle=str(bundle)), verify=fake_verify)
    runner, port = await start_http(service, TOKEN, port=0, origins=[EXT])
    assert runner.addresses[0][0] == "127.0.0.1"  # loopback only
    async with aiohttp.ClientSession() as s:
        yield Api(port, s)
    await runner.cleanup()
    await service.close()


async def test_a_good_request_is_answered(api: Api) -> None:
    status, headers, doc = await api.call("/v1/check", body={"host": "a.example", "port": 443, "id": 7})
    assert status == 200 and doc["type"] == "verdict" and doc["id"] == 7 and doc["verdict"]["status"] == "consistent"
    assert "Access-Control-Allow-Origin" not in headers  # no Origin, no CORS
    status, _, doc = await api.call("/v1/ping")
    assert status == 200 and doc["type"] == "pong"


async def test_localhost_name_is_allowed_too(api: Api) -> None:
    status, _, _ = await api.call(headers={"Host": f"localhost:{api.port}"})
    assert status == 200


@pytest.mark.parametrize("host", ["evil.example", "rebind.attacker.test:{port}", "127.0.0.1", "127.0.0.1:1",
                                  "localhost.evil.test:{port}", "[::1]:{port}", ""])
async def test_wrong_host_header_is_refused(api: Api, host: str) -> None:
    status, headers, doc = await api.call(headers={"Host": host.format(port=api.port)})
    assert status == 403 and doc["error"] == "bad_host"
    assert "Access-Control-Allow-Origin" not in headers


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://127.0.0.1", EXT + ".evil.test",
                                    "chrome-extension://aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"])
async def test_foreign_origin_is_refused(api: Api, origin: str) -> None:
    status, headers, doc = await api.call(headers={"Origin": origin})
    assert status == 403 and doc["error"] == "bad_origin"
    assert "Access-Control-Allow-Origin" not in headers


async def test_allowed_origin_gets_exact_cors_never_a_wildcard(api: Api) -> None:
    status, headers, _ = await api.call(headers={"Origin": EXT})
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == EXT
    assert "Origin" in headers["Vary"]
    status, headers, _ = await api.call(method="OPTIONS", headers={"Origin": EXT, "Access-Control-Request-Method": "POST"}, token=None)
    assert status == 204 and headers["Access-Control-Allow-Origin"] == EXT
    assert headers["Access-Control-Allow-Methods"] == "POST" and TOKEN_HEADER in headers["Access-Control-Allow-Headers"]
    status, headers, _ = await api.call(method="OPTIONS", headers={"Origin": "https://evil.example"}, token=None)
    assert status == 403 and "Access-Control-Allow-Origin" not in headers


@pytest.mark.parametrize("token", [None, "", "wrong", TOKEN[:-1], TOKEN + "x"])
async def test_missing_or_wrong_token_is_refused(api: Api, token: str | None) -> None:
    status, _, doc = await api.call("/v1/check", body={"host": "a.example"}, token=token)
    assert status == 401 and doc["error"] == "bad_token"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"])
async def test_only_post_is_accepted(api: Api, method: str) -> None:
    status, headers, doc = await api.call("/v1/check", method=method)
    assert status == 405 and headers["Allow"] == "POST"


async def test_get_with_query_string_is_refused(api: Api) -> None:
    async with api.session.get(f"{api.base}/v1/check?host=a.example", headers={TOKEN_HEADER: TOKEN}) as r:
        assert r.status == 405


async def test_body_must_be_a_json_object_of_bounded_size(api: Api) -> None:
    status, _, doc = await api.call(raw=b"host=a.example", content_type="application/x-www-form-urlencoded")
    assert status == 415
    status, _, doc = await api.call(raw=b'{"host": "a.example"}', content_type="text/plain")
    assert status == 415  # a "simple" cross-site request type is never accepted
    status, _, doc = await api.call(raw=b"{nope")
    assert status == 400 and doc["error"] == "bad_json"
    status, _, doc = await api.call(raw=b"[]")
    assert status == 400
    status, _, doc = await api.call(raw=b"{" + b" " * (1 << 20) + b"}")
    assert status == 413
    status, _, doc = await api.call("/v1/check", body={"host": "a b"})
    assert status == 400 and doc["error"] == "bad_host"
    status, _, doc = await api.call("/v1/other")
    assert status == 404


def test_token_file_is_private_and_stable(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "helper-token"
    token, where = load_or_create_token(p)
    assert where == p and len(token) >= 32
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert load_or_create_token(p)[0] == token


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_body_that_is_not_what_its_content_encoding_says_is_a_json_400(
        api: Api, encoding: str, caplog: pytest.LogCaptureFixture) -> None:
    status, headers, doc = await api.call(raw=b'{"host": "a.example"}', headers={"Content-Encoding": encoding})
    assert status == 400 and headers["Content-Type"].startswith("application/json")
    assert doc["error"] == "bad_encoding"
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.levelname == "ERROR" or r.exc_info]


# -- review 2, finding 5: malformed HTTP and slow bodies, over raw sockets --------------------------

async def _raw(port: int, data: bytes, *, then_wait: float = 10) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(then_wait):
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
        return int(lines[0].split()[1]), headers, body
    finally:
        writer.close()


def _head(port: int, extra: bytes, length: int) -> bytes:
    return (b"POST /v1/ping HTTP/1.1\r\nHost: 127.0.0.1:" + str(port).encode() + b"\r\nContent-Type: application/json\r\n"
            + TOKEN_HEADER.encode() + b": " + TOKEN.encode() + b"\r\n" + extra
            + b"Content-Length: " + str(length).encode() + b"\r\n\r\n")


@pytest.fixture
async def raw_api(tmp_path: Path) -> AsyncIterator[int]:
    bundle = tmp_path / "bundle.json"
    bundle.write_text(json.dumps({"version": 1, "notaries": []}))
    service = HelperService(HelperConfig(bundle=str(bundle)), verify=fake_verify)
    runner, port = await start_http(service, TOKEN, port=0, origins=[EXT], body_timeout=0.5)
    yield port
    await runner.cleanup()
    await service.close()


async def test_malformed_http_gets_a_json_400_echoing_nothing_and_no_traceback(
        raw_api: int, caplog: pytest.LogCaptureFixture) -> None:
    status, headers, body = await _raw(raw_api, _head(raw_api, b"Content-Encoding: br\r\n", 2) + b"{}")
    assert status == 400 and headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"] == "bad_encoding"
    secret = b"X-Secret-Echo-1234"
    status, headers, body = await _raw(raw_api, _head(raw_api, b"Content-Length: 3\r\n" + secret + b": 1\r\n", 2) + b"{}")
    assert status == 400 and headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"] == "bad_http"
    assert secret not in body and b"Content-Length" not in body
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.levelname == "ERROR" or r.exc_info]
    # The server still answers well-formed requests.
    status, _, body = await _raw(raw_api, _head(raw_api, b"", 2) + b"{}")
    assert status == 200


async def test_a_slow_body_is_cut_off_with_a_json_400(raw_api: int) -> None:
    started = time.monotonic()
    status, headers, body = await _raw(raw_api, _head(raw_api, b"", 100) + b'{"a"', then_wait=5)
    assert status == 400 and json.loads(body)["error"] == "body_timeout"
    assert time.monotonic() - started < 4
