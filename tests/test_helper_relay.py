"""The browser helper asks through an Oblivious HTTP relay by default when its bundle allows it.

Real notaries on loopback (local_cluster), a real TLS site; the helper service in process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from client.cluster import local_cluster
from client.devtools import StaticResolver, make_cert_context, tls_site
from client.helper.service import HelperConfig, HelperService
from notary.errors import InputError

HOST = "site.test"


@pytest.mark.parametrize("relays, expected", [((0,), ["notary-1"]), ((), None)])
async def test_helper_uses_a_relay_when_the_bundle_has_one(tmp_path: Path, relays: tuple[int, ...],
                                                           expected: list[str] | None) -> None:
    async with tls_site(make_cert_context(HOST), host="127.0.0.1") as site, \
            local_cluster(4, tmp_path / "c", resolver=StaticResolver({HOST: ["127.0.0.1"]}), relays=relays) as cluster:
        service = HelperService(HelperConfig(bundle=str(cluster.bundle_path), timeout=5))
        assert service.config.relay == "auto"
        try:
            r: dict[str, Any] = await service.handle(
                {"type": "check", "id": 1, "host": HOST, "port": site.port, "ip": "127.0.0.1"})
        finally:
            await service.close()
    v = r["verdict"]
    assert v["status"] == "consistent", v["summary"]
    assert v.get("relays") == expected
    assert len(v["results"]) == (3 if expected else 4)  # the relay notary is not asked


def test_helper_relay_setting_is_validated(tmp_path: Path) -> None:
    cfg = tmp_path / "helper.json"
    cfg.write_text('{"relay": "none"}')
    assert HelperConfig.load(cfg).relay == "none"
    cfg.write_text('{"relay": "gopher://x"}')
    with pytest.raises(InputError):
        HelperConfig.load(cfg)
