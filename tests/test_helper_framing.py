"""Native messaging framing and the host loop: partial reads, oversize both ways, malformed frames.

The host loop runs on a real ``asyncio.StreamReader`` fed the way a pipe feeds it
(arbitrary chunks); one test runs the real host process (``python -m
client.helper.native``) on real pipes.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from client.helper.framing import MAX_IN, MAX_OUT, BadMessage, FrameTooLarge, decode_message, encode_frame, read_frame
from client.helper.native import NativeHost, frame_response
from client.helper.service import HelperService

ROOT = Path(__file__).resolve().parents[1]


def frame(obj: Any) -> bytes:
    payload = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return len(payload).to_bytes(4, sys.byteorder) + payload


def parse_frames(data: bytes) -> list[dict[str, Any]]:
    """Split a byte stream into frames, insisting that it holds nothing else."""
    out, i = [], 0
    while i < len(data):
        assert i + 4 <= len(data), "trailing bytes that are not a frame"
        n = int.from_bytes(data[i:i + 4], sys.byteorder)
        assert n <= MAX_OUT
        body = data[i + 4:i + 4 + n]
        assert len(body) == n, "truncated frame"
        out.append(json.loads(body.decode("utf-8")))
        i += 4 + n
    return out


async def echo(msg: dict[str, Any]) -> dict[str, Any]:
    return {"type": "echo", "id": msg.get("id"), "got": msg}


async def serve(chunks: list[bytes], handler: Any = echo, **kw: Any) -> tuple[int, list[dict[str, Any]]]:
    """Run a host over ``chunks`` (fed one by one, yielding between them); return its exit code and frames."""
    reader = asyncio.StreamReader()
    written = bytearray()

    async def write(b: bytes) -> None:
        written.extend(b)

    async def feed() -> None:
        for c in chunks:
            reader.feed_data(c)
            await asyncio.sleep(0)
        reader.feed_eof()

    host = NativeHost(handler, write, **kw)
    code, _ = await asyncio.gather(host.run(reader), feed())
    return code, parse_frames(bytes(written))


# -- the frame format --------------------------------------------------------------

def test_encode_is_native_endian_length_then_utf8_json() -> None:
    b = encode_frame({"type": "pong", "text": "héllo"})
    n = int.from_bytes(b[:4], sys.byteorder)
    assert n == len(b) - 4
    assert json.loads(b[4:].decode("utf-8")) == {"type": "pong", "text": "héllo"}
    assert "héllo".encode() in b  # UTF-8, not \\u escapes


def test_encode_refuses_more_than_the_browser_limit() -> None:
    assert MAX_OUT == 1024 * 1024
    encode_frame({"s": "x" * (MAX_OUT - 20)})
    with pytest.raises(FrameTooLarge):
        encode_frame({"s": "x" * MAX_OUT})


@pytest.mark.parametrize("payload", [b"", b"{", b"[1, 2]", b'"text"', b"\xff\xfe{}", b"NaN", b'{"a": NaN}', b"[" * 100000])
def test_decode_rejects_what_is_not_a_json_object(payload: bytes) -> None:
    with pytest.raises(BadMessage):
        decode_message(payload)


async def test_partial_reads_byte_by_byte() -> None:
    data = frame({"type": "a", "id": 1}) + frame({"type": "b", "id": 2})
    code, out = await serve([data[i:i + 1] for i in range(len(data))])
    assert code == 0
    assert [f["id"] for f in out] == [1, 2]


async def test_several_frames_in_one_chunk_and_frames_split_across_chunks() -> None:
    data = b"".join(frame({"type": "x", "id": i}) for i in range(5))
    code, out = await serve([data[:3], data[3:30], data[30:]])
    assert code == 0 and sorted(f["id"] for f in out) == list(range(5))


async def test_read_frame_returns_none_only_at_a_clean_end() -> None:
    r = asyncio.StreamReader()
    r.feed_data(frame({"a": 1}))
    r.feed_eof()
    assert await read_frame(r) == b'{"a": 1}'
    assert await read_frame(r) is None


@pytest.mark.parametrize("tail", [b"\x05\x00", frame({"type": "x"})[:-3]])
async def test_truncated_input_ends_the_host_without_a_crash(tail: bytes) -> None:
    code, out = await serve([frame({"type": "x", "id": 1}), tail])
    assert code == 1
    assert [f["id"] for f in out] == [1]


# -- oversize, both ways -----------------------------------------------------------

async def test_oversized_inbound_frame_gets_an_error_and_the_stream_stays_in_step() -> None:
    big = (MAX_IN + 1).to_bytes(4, sys.byteorder) + b"x" * (MAX_IN + 1)
    code, out = await serve([frame({"type": "x", "id": 1}), big[:1000], big[1000:], frame({"type": "x", "id": 2})])
    assert code == 0
    assert out[0]["id"] == 1
    assert out[1] == {"type": "error", "id": None, "error": "frame_too_large", "message": out[1]["message"]}
    assert str(MAX_IN + 1) in out[1]["message"]
    assert out[2]["id"] == 2


async def test_a_frame_of_exactly_the_limit_is_accepted() -> None:
    empty = json.dumps({"type": "x", "id": 7, "pad": ""}).encode()
    pad = MAX_IN - len(empty)
    body = empty[:-2] + b"y" * pad + b'"}'
    assert len(body) == MAX_IN

    async def small(msg: dict[str, Any]) -> dict[str, Any]:
        return {"type": "ok", "id": msg["id"], "size": len(msg["pad"])}

    _, out = await serve([frame(body)], small)
    assert out == [{"type": "ok", "id": 7, "size": pad}]


async def test_huge_declared_length_is_skipped_with_bounded_reads() -> None:
    # A 4 GiB length whose body never comes: one error-free exit, nothing buffered.
    code, out = await serve([b"\xff\xff\xff\xff", b"x" * 1000], max_in=64)
    assert code == 1 and out == []


async def test_oversized_response_becomes_an_error_frame() -> None:
    async def huge(msg: dict[str, Any]) -> dict[str, Any]:
        return {"type": "blob", "id": msg["id"], "data": "x" * (MAX_OUT + 10)}

    _, out = await serve([frame({"type": "x", "id": "q"})], huge)
    assert out == [{"type": "error", "id": "q", "error": "response_too_large", "message": out[0]["message"]}]


def test_oversized_verdict_is_shortened_not_dropped() -> None:
    results = [{"name": f"n{i}", "region": "r", "result": "agrees", "counted": True, "reason": "x" * 5000,
                "pins": ["sha256/" + "A" * 43 + "="] * 10, "ips": [], "age": 0, "source": "probe", "key_id": "k"}
               for i in range(256)]
    resp = {"type": "verdict", "id": 3, "cached": False,
            "verdict": {"status": "consistent", "summary": "ok", "results": results, "quorum_pins": []}}
    b = frame_response(resp)
    assert len(b) - 4 <= MAX_OUT
    got = parse_frames(b)[0]
    assert got["verdict"]["status"] == "consistent" and got["verdict"]["truncated"] is True
    assert len(got["verdict"]["results"]) == 256 and set(got["verdict"]["results"][0]) == {"name", "region", "result", "counted"}


# -- malformed messages and unknown types --------------------------------------------

async def test_malformed_frames_get_error_frames_and_the_host_keeps_going() -> None:
    code, out = await serve([
        frame(b"{not json"), frame(b"\xff\xfe"), frame(b"[1]"), frame(b""), frame({"type": "x", "id": "after"}),
    ])
    assert code == 0
    assert [f.get("error") for f in out[:4]] == ["bad_json"] * 4
    assert out[4]["id"] == "after"


async def test_unknown_and_missing_request_types() -> None:
    service = HelperService()
    _, out = await serve([frame({"type": "launch-missiles", "id": 1}), frame({"id": 2}), frame({"type": "check", "id": True})],
                         service.handle)
    by_id = {f["id"]: f for f in out}
    assert by_id[1]["error"] == "unknown_type" and "launch-missiles" in by_id[1]["message"]
    assert by_id[2]["error"] == "unknown_type"
    assert by_id[None]["error"] == "bad_request"  # a boolean id is refused


async def test_a_failing_handler_yields_an_internal_error_not_a_crash() -> None:
    async def boom(msg: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("bug")

    code, out = await serve([frame({"type": "x", "id": 9}), frame({"type": "x", "id": 10})], boom)
    assert code == 0 and [(f["id"], f["error"]) for f in out] == [(9, "internal"), (10, "internal")]


# -- concurrency -----------------------------------------------------------------------

async def test_requests_are_answered_concurrently_out_of_order() -> None:
    release = asyncio.Event()

    async def slow_first(msg: dict[str, Any]) -> dict[str, Any]:
        if msg["id"] == "slow":
            await release.wait()
        else:
            release.set()
        return {"type": "done", "id": msg["id"]}

    _, out = await serve([frame({"type": "x", "id": "slow"}), frame({"type": "x", "id": "fast"})], slow_first)
    assert [f["id"] for f in out] == ["fast", "slow"]


async def test_too_many_requests_in_flight_get_busy() -> None:
    gate = asyncio.Event()

    async def wait(msg: dict[str, Any]) -> dict[str, Any]:
        await gate.wait()
        return {"type": "done", "id": msg["id"]}

    reader = asyncio.StreamReader()
    written = bytearray()

    async def write(b: bytes) -> None:
        written.extend(b)

    host = NativeHost(wait, write, max_pending=2)
    run = asyncio.create_task(host.run(reader))
    for i in range(3):
        reader.feed_data(frame({"type": "x", "id": i}))
    for _ in range(200):  # until the host has read all three (no fixed sleep: CI may be slow)
        if written:
            break
        await asyncio.sleep(0.01)
    assert parse_frames(bytes(written)) == [{"type": "error", "id": 2, "error": "busy", "message": "2 requests already in flight"}]
    gate.set()
    reader.feed_eof()
    assert await run == 0
    assert sorted(f["id"] for f in parse_frames(bytes(written))[1:]) == [0, 1]


# -- the real process on real pipes ---------------------------------------------------------

def test_native_host_process_speaks_only_frames_on_stdout(tmp_path: Path) -> None:
    data = b"".join([
        frame({"type": "ping", "id": 1}),
        frame(b"{broken"),
        (MAX_IN + 5).to_bytes(4, sys.byteorder) + b"z" * (MAX_IN + 5),
        frame({"type": "nope", "id": "u"}),
        frame({"type": "check", "id": 2, "host": "example.com"}),
        frame({"type": "check", "id": 3, "host": "bad host!"}),
    ])
    env = {**os.environ, "PARALLAX_BUNDLE": str(tmp_path / "missing.json"), "PARALLAX_HELPER_CONFIG": str(tmp_path / "none.json"),
           "PARALLAX_LOG": "DEBUG"}
    proc = subprocess.run([sys.executable, "-m", "client.helper.native", "chrome-extension://abc/"], input=data,
                          capture_output=True, env=env, cwd=ROOT, timeout=30)
    assert proc.returncode == 0, proc.stderr.decode()
    out = parse_frames(proc.stdout)  # stdout holds frames and nothing else
    by_id = {f["id"]: f for f in out if f["id"] is not None}
    errors = sorted(f["error"] for f in out if f["id"] is None)
    assert errors == ["bad_json", "frame_too_large"]
    assert by_id[1]["type"] == "pong" and by_id[1]["bundle"]["path"] == str(tmp_path / "missing.json")
    assert "error" in by_id[1]["bundle"]
    assert by_id["u"]["error"] == "unknown_type"
    assert by_id[2]["error"] == "no_bundle"
    assert by_id[3]["type"] == "error" and by_id[3]["error"].startswith("bad")


def test_native_host_with_a_broken_config_answers_bad_config(tmp_path: Path) -> None:
    cfg = tmp_path / "helper.json"
    cfg.write_text('{"policy": "no-such-policy"}')
    env = {**os.environ, "PARALLAX_HELPER_CONFIG": str(cfg)}
    proc = subprocess.run([sys.executable, "-m", "client.helper.native"], input=frame({"type": "ping", "id": 1}),
                          capture_output=True, env=env, cwd=ROOT, timeout=30)
    assert proc.returncode == 0
    [resp] = parse_frames(proc.stdout)
    assert resp["error"] == "bad_config" and "no-such-policy" in resp["message"]
