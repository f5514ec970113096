"""Client state files under concurrent writers and loose permissions (review findings F6, F7).

Real processes (fork) racing on a real temporary directory; real SQLite files.
"""

from __future__ import annotations

import multiprocessing
import os
import stat
from pathlib import Path

from client.bundle_state import BundleState
from notary.core import Target

OPERATOR = "ed25519:" + "ab" * 32
RUNS = 30


def _accept(state_dir: str, version: int, go: "multiprocessing.synchronize.Event") -> None:
    go.wait(5)
    BundleState(state_dir).accept(OPERATOR, version)


def test_two_processes_accepting_at_once_never_move_the_version_backwards(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    lost = 0
    for run in range(RUNS):
        d = tmp_path / f"run-{run}"
        go = ctx.Event()
        procs = [ctx.Process(target=_accept, args=(str(d), v, go)) for v in (3, 9)]
        for p in procs:
            p.start()
        go.set()
        for p in procs:
            p.join(10)
            assert p.exitcode == 0
        if BundleState(d).highest(OPERATOR) != 9:
            lost += 1
    assert lost == 0, f"{lost}/{RUNS} races left an older version than 9"


def test_an_existing_key_memory_file_with_loose_permissions_is_set_to_0600(tmp_path: Path) -> None:
    from client.keymemory import KeyStore

    path = tmp_path / "keys.sqlite3"
    store = KeyStore(path)
    store.record(Target.parse("a.test", 443), "00" * 32, "consistent", 1_700_000_000)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # created so
    os.chmod(path, 0o644)  # e.g. written by an older version, or copied with cp
    assert [k.spki_sha256 for k in store.memory(Target.parse("a.test", 443)).keys] == ["00" * 32]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    os.chmod(path, 0o660)
    store.targets()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
