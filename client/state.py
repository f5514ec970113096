"""The per-user state directory (remembered keys, signed-bundle versions: small client state).

``$PARALLAX_STATE_DIR`` when set (tests point it at a temporary directory),
else platformdirs' ``user_state_dir("parallax")`` (``~/.local/state/parallax``
on Linux).  Created on first use with mode 0700: what it holds says which
sites this user checks.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from notary.errors import ConfigError

__all__ = ["STATE_ENV", "state_dir"]

STATE_ENV = "PARALLAX_STATE_DIR"


def state_dir(create: bool = True) -> Path:
    """The state directory (created 0700 when ``create``).  Raises :class:`ConfigError` if it cannot be made.

    The one definition of where client state lives: the key memory
    (:mod:`client.keymemory`) and the signed-bundle versions (:mod:`client.bundle_state`).
    """
    env = os.environ.get(STATE_ENV)
    path = Path(env) if env else Path(platformdirs.user_state_dir("parallax"))
    if create:
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the state directory {path}: {exc.strerror or exc}") from None
    return path
