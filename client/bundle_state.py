"""The highest signed-bundle version accepted per operator key: the client's rollback memory.

One small JSON file, ``bundle-versions.json``, in the user's state directory
(``$PARALLAX_STATE_DIR``, else platformdirs' ``user_state_dir("parallax")``,
e.g. ``~/.local/state/parallax`` on Linux)::

    {"version": 1, "operators": {"ed25519:<hex>": 7, ...}}

The directory is created 0700 and the file written 0600, atomically (a
temporary file in the same directory, fsynced, then renamed over the old one),
so a crash leaves either the old or the new file, never a torn one.  An update
reads, raises and replaces the file under an exclusive ``flock`` on the state
directory itself (no lock file is left behind), so two clients updating at
once never lose one another's update: the remembered value never goes down.
A file that is not this shape is a
:class:`~notary.errors.ConfigError` (delete it to reset the memory); it is
never silently ignored, since that would re-open rollbacks.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator


from notary.errors import ConfigError
from client.state import STATE_ENV, state_dir

__all__ = ["BundleState", "STATE_ENV", "STATE_FILE", "default_state_dir"]

STATE_FILE = "bundle-versions.json"
MAX_STATE_BYTES = 1 << 20
MAX_OPERATORS = 4096


def default_state_dir() -> Path:
    """``$PARALLAX_STATE_DIR``, else the platform's user state directory for parallax (:func:`client.state.state_dir`)."""
    return state_dir(create=False)


class BundleState:
    """Read and raise the highest accepted ``bundle_version`` per operator key id."""

    def __init__(self, state_dir: str | os.PathLike[str] | None = None) -> None:
        self.dir = Path(state_dir) if state_dir is not None else default_state_dir()
        self.path = self.dir / STATE_FILE

    def _read(self) -> dict[str, int]:
        try:
            with open(self.path, "rb") as f:
                raw = f.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ConfigError(f"cannot read {self.path}: {exc.strerror}") from None
        try:
            if len(raw) > MAX_STATE_BYTES:
                raise ValueError("too large")
            doc = json.loads(raw)
            ops = doc["operators"]
            if doc.get("version") != 1 or not isinstance(ops, dict):
                raise ValueError("not a version 1 state file")
            for k, v in ops.items():
                if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise ValueError(f"bad entry {k!r}")
            return dict(ops)
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{self.path} is corrupt ({exc}); delete it to reset the bundle-version memory") from None

    def highest(self, key_id: str) -> int | None:
        """The highest version accepted for ``key_id`` so far, or None."""
        return self._read().get(key_id)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the exclusive lock on the state directory (blocks while another process holds it)."""
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise ConfigError(f"cannot lock {self.dir}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def accept(self, key_id: str, version: int) -> None:
        """Remember ``version`` for ``key_id`` if it is higher than what is stored (atomic write,
        read and replaced under the lock)."""
        self._read()  # an unreadable or corrupt file is reported as such before anything is created
        with self._locked():
            self._accept(key_id, version)

    def _accept(self, key_id: str, version: int) -> None:
        ops = self._read()
        if ops.get(key_id, 0) >= version:
            return
        ops[key_id] = version
        if len(ops) > MAX_OPERATORS:
            raise ConfigError(f"{self.path} remembers more than {MAX_OPERATORS} operator keys")
        data = json.dumps({"version": 1, "operators": dict(sorted(ops.items()))}, indent=1).encode() + b"\n"
        tmp = None
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".bundle-versions.", dir=self.dir)  # created 0600
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            tmp = None
        except OSError as exc:
            raise ConfigError(f"cannot record the bundle version in {self.path}: {exc.strerror}") from None
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
