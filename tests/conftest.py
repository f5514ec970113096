"""Suite-wide fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _private_state_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own client state directory (signed-bundle versions), never the user's.

    Set in the environment, so subprocesses (the ``parallax`` console script) inherit it.
    """
    d = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("PARALLAX_STATE_DIR", str(d))
    return d
