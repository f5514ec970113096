"""The store returns a target's key history with its commit (one job on the store thread, issue 11).

``SQLiteStore.add`` commits a round and then, in the same job, reads the
target's key history; the service signs with it instead of asking again.  The
history must be exactly what ``key_history`` returns after the commit, for
every round of a group commit; if that read fails the round is still
committed and the service reads the history itself.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from notary.core import AddressPolicy, ProbeResult, SigningKey, Target
from notary.prober import Prober
from notary.service import ObservationService
from notary.store import SQLiteStore
from tests.support.tls import make_ca

T0 = 1_700_000_000


@pytest.fixture(scope="module")
def certs() -> list[Any]:
    ca = make_ca()
    return [ca.issue_cert("a.example", "127.0.0.1") for _ in range(3)]


def _ok(target: Target, ip: str, at: int, cert: Any) -> ProbeResult:
    chain = tuple(x509.load_pem_x509_certificate(p.bytes()).public_bytes(Encoding.DER) for p in cert.cert_chain_pems)
    return ProbeResult.success(target, ip, at, "TLSv1.3", chain)


async def test_add_returns_the_history_key_history_returns_after_the_commit(tmp_path: Path, certs: list[Any]) -> None:
    store = await SQLiteStore.open(tmp_path / "obs.sqlite3")
    try:
        t = Target.parse("a.example", 443)
        first = await store.add([_ok(t, "192.0.2.1", T0, certs[0])], all_addresses=False)
        assert first == await store.key_history(t) and len(first) == 1
        second = await store.add([_ok(t, "192.0.2.1", T0 + 5, certs[1]), _ok(t, "192.0.2.2", T0 + 5, certs[0])],
                                 all_addresses=True)
        assert second == await store.key_history(t)
        assert second is not None and sorted((h.first_seen, h.last_seen) for h in second) == [(T0, T0 + 5), (T0 + 5, T0 + 5)]
        failed = await store.add([ProbeResult.failure(t, "192.0.2.1", T0 + 9, "timeout", "x")], all_addresses=False)
        assert failed == second  # a failure shows no key: the history is unchanged
    finally:
        await store.close()


async def test_each_round_of_a_group_commit_gets_its_own_targets_history(tmp_path: Path, certs: list[Any]) -> None:
    store = await SQLiteStore.open(tmp_path / "obs.sqlite3")
    try:
        targets = [Target.parse(f"h{i}.example", 443) for i in range(30)]
        got = await asyncio.gather(*(store.add([_ok(t, "192.0.2.1", T0 + i, certs[i % 3])], all_addresses=False)
                                     for i, t in enumerate(targets)))
        for i, (t, history) in enumerate(zip(targets, got)):
            assert history == await store.key_history(t)
            assert history is not None and len(history) == 1 and history[0].first_seen == T0 + i
    finally:
        await store.close()


async def test_a_failed_history_read_keeps_the_commit_and_the_service_reads_it_itself(
        tmp_path: Path, certs: list[Any]) -> None:
    store = await SQLiteStore.open(tmp_path / "obs.sqlite3")
    t = Target.parse("a.example", 443)
    real_history = store._history  # noqa: SLF001
    failures: list[Target] = []

    def failing_once(target: Target, limit: int) -> Any:
        if not failures:
            failures.append(target)
            raise sqlite3.OperationalError("disk I/O error (injected after the commit)")
        return real_history(target, limit)

    store._history = failing_once  # type: ignore[method-assign]  # noqa: SLF001
    try:
        assert await store.add([_ok(t, "192.0.2.1", T0, certs[0])], all_addresses=False) is None
        assert await store.count() == 1  # committed all the same
        assert failures == [t]

        # The service, given None, reads the history itself and signs with it.
        failures.clear()

        class OneResultProber(Prober):
            """A fake at the network seam: this test is about the store, not about probing."""

            async def probe(self, target: Target, *, all_addresses: bool = False) -> list[ProbeResult]:
                return [_ok(target, "192.0.2.1", T0 + 3, certs[1])]

        service = ObservationService(SigningKey.generate(), OneResultProber(AddressPolicy(), clock=lambda: T0 + 3),
                                     store, clock=lambda: T0 + 3)
        signed = await service.fresh(t)
        assert failures == [t]  # the read in the store's job failed again ...
        payload = json.loads(base64.b64decode(service._latest[(t, False)].envelopes[0]["payload"]))  # noqa: SLF001
        assert signed[0].observed_at == T0 + 3
        # ... and the service's own read supplied the history with both keys.
        assert payload["key_history"] == [h.to_json() for h in await store.key_history(t)]
        assert len(payload["key_history"]) == 2
    finally:
        await store.close()


async def test_a_failed_write_is_an_error_for_the_request_and_nothing_is_cached_or_kept(
        tmp_path: Path, certs: list[Any]) -> None:
    """The answer waits for the commit: a write that fails (injected: a real disk failure cannot be
    provoked on demand) is a StoreError for the caller (the server answers 503), the round is
    neither cached nor stored, and the store serves the next probe normally."""
    from notary.errors import StoreError

    store = await SQLiteStore.open(tmp_path / "obs.sqlite3")
    real_write = store._write  # noqa: SLF001

    def failing_write(rounds: Any) -> None:
        raise sqlite3.OperationalError("disk I/O error (injected)")

    class OneResultProber(Prober):
        """A fake at the network seam: this test is about the store and the service."""

        async def probe(self, target: Target, *, all_addresses: bool = False) -> list[ProbeResult]:
            return [_ok(target, "192.0.2.1", T0 + 3, certs[1])]

    service = ObservationService(SigningKey.generate(), OneResultProber(AddressPolicy(), clock=lambda: T0 + 3),
                                 store, clock=lambda: T0 + 3)
    t = Target.parse("a.example", 443)
    store._write = failing_write  # type: ignore[method-assign]  # noqa: SLF001
    try:
        with pytest.raises(StoreError, match="injected"):
            await service.fresh(t)
        assert (t, False) not in service._latest  # noqa: SLF001
        assert await store.count() == 0
        store._write = real_write  # type: ignore[method-assign]  # noqa: SLF001
        assert (await service.fresh(t))[0].status == "ok"
        assert (t, False) in service._latest and await store.count() == 1  # noqa: SLF001
    finally:
        await store.close()
