"""notary.eventloop: the CLI's loop is uvloop where installed; PARALLAX_LOOP chooses; a bad choice is one line, exit 78."""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import uvloop

from notary import eventloop
from notary.errors import ConfigError
from tests.support.proc import stop, wait_healthy

PARALLAX = [sys.executable, "-c", "from client.cli import run_main; run_main()"]


async def _loop_type() -> type:
    return type(asyncio.get_running_loop())


def test_auto_is_uvloop_where_installed_and_asyncio_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(eventloop.ENV, raising=False)
    assert eventloop.chosen() == "uvloop"
    assert eventloop.run(_loop_type()) is uvloop.Loop
    assert eventloop.run(_loop_type(), loop="asyncio") is not uvloop.Loop
    monkeypatch.setenv(eventloop.ENV, "asyncio")
    assert eventloop.chosen() == "asyncio"
    got = eventloop.run(_loop_type())
    assert got is not uvloop.Loop and issubclass(got, asyncio.BaseEventLoop)
    monkeypatch.setenv(eventloop.ENV, "uvloop")
    assert eventloop.run(_loop_type()) is uvloop.Loop
    monkeypatch.setenv(eventloop.ENV, "")  # empty: the default
    assert eventloop.chosen() == "uvloop"


def test_run_returns_the_result_and_raises_what_the_coroutine_raises() -> None:
    async def value() -> int:
        await asyncio.sleep(0)
        return 42

    async def boom() -> None:
        raise ValueError("from inside")

    assert eventloop.run(value()) == 42
    with pytest.raises(ValueError, match="from inside"):
        eventloop.run(boom())


def test_an_unknown_loop_is_a_config_error_and_the_coroutine_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(eventloop.ENV, "trio")
    with pytest.raises(ConfigError, match="PARALLAX_LOOP must be one of auto, uvloop, asyncio, not 'trio'"):
        eventloop.chosen()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "coroutine ... was never awaited" would be a RuntimeWarning
        with pytest.raises(ConfigError):
            eventloop.run(_loop_type())
        gc.collect()


def test_without_uvloop_auto_falls_back_and_uvloop_by_name_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # A seam fake: uvloop is a dependency here, so "not installed" is simulated at the lookup.
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvloop" else real(name, *a))
    monkeypatch.delenv(eventloop.ENV, raising=False)
    assert eventloop.chosen() == "asyncio"
    assert eventloop.loop_factory() is None
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        eventloop.chosen("uvloop")


def test_the_cli_refuses_a_bad_loop_with_one_line_and_exit_78(tmp_path: Path) -> None:
    env = dict(os.environ, PARALLAX_LOOP="libuv")
    p = subprocess.run([*PARALLAX, "demo", "--data-dir", str(tmp_path / "demo")], capture_output=True, text=True,
                       timeout=30, env=env, stdin=subprocess.DEVNULL)
    assert p.returncode == 78, (p.returncode, p.stderr)
    assert p.stderr.strip() == "parallax: PARALLAX_LOOP must be one of auto, uvloop, asyncio, not 'libuv'"
    assert p.stdout == ""
    assert not (tmp_path / "demo").exists()  # nothing started


@pytest.mark.parametrize(("choice", "workers", "expected"), [("", "1", "uvloop"), ("asyncio", "1", "asyncio"),
                                                             ("", "2", "uvloop")])
def test_serve_says_which_loop_it_runs_and_serves_on_it(tmp_path: Path, choice: str, workers: str,
                                                         expected: str) -> None:
    d, log = tmp_path / "notary", tmp_path / "serve.log"
    env = dict(os.environ, PARALLAX_LOOP=choice)
    with open(log, "wb") as err:
        proc = subprocess.Popen([*PARALLAX, "serve", "--init", "--region", "test", "--data-dir", str(d),
                                 "--listen", "127.0.0.1:0", "--workers", workers],
                                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, env=env)
    try:
        assert proc.stdout is not None
        started = json.loads(proc.stdout.readline())
        assert started["loop"] == expected
        wait_healthy(started["serving"], proc, log)
    finally:
        stop(proc)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == 0
    assert "Traceback" not in log.read_text()
