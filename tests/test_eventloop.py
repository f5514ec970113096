"""notary.eventloop: the CLI's loop is uvloop where installed; PARALLAX_LOOP chooses; a bad choice is one line, exit 78."""

from __future__ import annotations

import asyncio
import gc
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


# CI's uvloop tier installs uvloop's policy for the whole suite (tests/conftest.py): then asyncio's
# "own" loop, the policy's, is uvloop's too, and only the factory itself can be checked.
POLICY_IS_UVLOOP = isinstance(asyncio.get_event_loop_policy(), uvloop.EventLoopPolicy)


def _is_asyncio_own_loop(t: type) -> bool:
    return POLICY_IS_UVLOOP or (t is not uvloop.Loop and issubclass(t, asyncio.BaseEventLoop))


def test_auto_is_uvloop_where_installed_and_asyncio_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(eventloop.ENV, raising=False)
    assert eventloop.chosen() == "uvloop"
    assert eventloop.run(_loop_type()) is uvloop.Loop
    assert eventloop.loop_factory("asyncio") is None
    assert _is_asyncio_own_loop(eventloop.run(_loop_type(), loop="asyncio"))
    monkeypatch.setenv(eventloop.ENV, "asyncio")
    assert eventloop.chosen() == "asyncio"
    assert _is_asyncio_own_loop(eventloop.run(_loop_type()))
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
    # A seam fake: uvloop is a dependency here, so "not importable" is simulated in sys.modules
    # (a None entry makes ``import uvloop`` raise ImportError, as a missing or broken build does).
    monkeypatch.setitem(sys.modules, "uvloop", None)
    monkeypatch.delenv(eventloop.ENV, raising=False)
    assert eventloop.chosen() == "asyncio"
    assert eventloop.loop_factory() is None
    assert _is_asyncio_own_loop(eventloop.run(_loop_type()))
    with pytest.raises(ConfigError, match="PARALLAX_LOOP=uvloop, but uvloop does not import"):
        eventloop.chosen("uvloop")


def test_a_uvloop_that_fails_to_import_leaves_the_cli_on_asyncio(tmp_path: Path) -> None:
    """Review: ``auto`` only looked for uvloop, so a build that is found but does not load made
    every command an internal error (exit 70) instead of running on asyncio's loop."""
    broken = tmp_path / "site" / "uvloop"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('raise ImportError("this uvloop build does not load here")\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]))
    env.pop(eventloop.ENV, None)
    p = subprocess.run([*PARALLAX, "notary-info", "http://127.0.0.1:9/", "--timeout", "2"], capture_output=True,
                       text=True, timeout=30, env=env, stdin=subprocess.DEVNULL)
    assert p.returncode == 69, (p.returncode, p.stderr)  # the notary is down: the command's own answer
    assert "internal error" not in p.stderr and "never awaited" not in p.stderr and "Traceback" not in p.stderr
    env[eventloop.ENV] = "uvloop"
    p = subprocess.run([*PARALLAX, "notary-info", "http://127.0.0.1:9/", "--timeout", "2"], capture_output=True,
                       text=True, timeout=30, env=env, stdin=subprocess.DEVNULL)
    assert p.returncode == 78, (p.returncode, p.stderr)
    assert p.stderr.strip() == ("parallax: PARALLAX_LOOP=uvloop, but uvloop does not import: "
                                "this uvloop build does not load here")


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
