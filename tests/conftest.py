"""Suite-wide fixtures."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

if os.environ.get("PARALLAX_LOOP") == "uvloop":
    # The suite on uvloop (CI's uvloop tier): every loop a test starts, pytest-asyncio's and
    # asyncio.run's, is uvloop's.  Unset, tests run on asyncio's loop, and the CLI's entry points
    # (notary.eventloop, "auto") on uvloop where it is installed.
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


@pytest.fixture(autouse=True)
def _private_state_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own client state directory (signed-bundle versions), never the user's.

    Set in the environment, so subprocesses (the ``parallax`` console script) inherit it.
    """
    d = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("PARALLAX_STATE_DIR", str(d))
    return d
