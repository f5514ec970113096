"""A local notary cluster on loopback, for development, demos, tests and benchmarks.

``local_cluster(n, data_dir)`` starts ``n`` real notary servers (on 127.0.0.1,
ephemeral or given ports, served as ``parallax serve`` serves one:
:func:`notary.serving.start_serving`, behind its connection guard) in this process, each with
its own key and SQLite store under ``data_dir/notary-<i>``, allowed to observe
loopback targets on any port (it is a development cluster), and writes their
bundle to ``data_dir/bundle.json``.  Notaries whose index is in ``relays`` also
run an Oblivious HTTP relay for the cluster's bundle (``relay: true`` entries).
"""

from __future__ import annotations

import contextlib
import json
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Callable

from aiohttp import web

from notary.appkeys import GUARD
from notary.config import NotaryConfig
from notary.connguard import ConnLimits
from notary.core import AddressPolicy, SigningKey, parse_networks
from notary.keyfile import generate_key_file, key_path, load_key_file
from notary.prober import ProbeLimits, Resolver
from notary.relay import RelayConfig
from notary.server import create_app
from notary.service import ServiceLimits
from notary.serving import start_serving
from client.bundle import Bundle, BundleEntry

__all__ = ["LocalCluster", "local_cluster", "LOOPBACK_NETS"]

LOOPBACK_NETS = ("127.0.0.0/8", "::1/128")


@dataclass
class LocalCluster:
    bundle: Bundle
    bundle_path: Path
    runners: list[web.AppRunner] = field(default_factory=list)
    apps: list[web.Application] = field(default_factory=list)
    keys: list[SigningKey] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [e.url for e in self.bundle.notaries]

    async def stop_one(self, i: int) -> None:
        """Stop notary ``i`` (its port then refuses connections)."""
        await self.runners[i].cleanup()


@contextlib.asynccontextmanager
async def local_cluster(
    n: int,
    data_dir: str | Path,
    *,
    host: str = "127.0.0.1",
    ports: list[int] | None = None,
    regions: list[str] | None = None,
    ttl: int = 300,
    timeout: float = 5.0,
    resolver: Resolver | None = None,
    connect_override: dict[tuple[str, int], tuple[str, int]] | None = None,
    per_notary_overrides: list[dict[tuple[str, int], tuple[str, int]]] | None = None,
    clock: Callable[[], int] | None = None,
    rate: float = 1000.0,
    burst: int | None = None,
    relays: tuple[int, ...] = (),
    conn_limits: ConnLimits | None = None,
) -> AsyncIterator[LocalCluster]:
    """Run ``n`` notaries until the block ends.  Keys persist in ``data_dir`` across runs.

    ``connect_override`` applies to every notary; ``per_notary_overrides[i]`` to notary ``i``
    only (to put an interceptor on one notary's path).  ``rate``/``burst`` (default ``2 * rate``): each
    notary's per-client limit; a relay's clients get :meth:`RelayConfig.sized_for` of it.
    ``conn_limits``: each notary's connection guard (default: ``parallax serve``'s).
    """
    data = Path(data_dir)
    data.mkdir(parents=True, exist_ok=True)
    cluster = LocalCluster(Bundle(()), data / "bundle.json")
    entries: list[BundleEntry] = []
    gateways: dict[str, str] = {}  # filled as notaries start; relays forward only once all have
    policy = AddressPolicy(parse_networks(LOOPBACK_NETS), None)
    try:
        for i in range(n):
            d = data / f"notary-{i + 1}"
            key = load_key_file(d) if key_path(d).exists() else generate_key_file(d)
            region = regions[i] if regions else f"local-{i + 1}"
            # Bind first, so the advertised URL (in the signed identity) names the real port.
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, ports[i] if ports else 0))
            url = f"http://{f'[{host}]' if ':' in host else host}:{sock.getsockname()[1]}"
            cfg = NotaryConfig(
                data_dir=d, name=f"notary-{i + 1}", region=region, url=url,
                policy=policy,
                probe_limits=ProbeLimits(connect_timeout=timeout, handshake_timeout=timeout),
                service_limits=ServiceLimits(ttl=ttl), rate_per_client=rate,
                burst_per_client=burst if burst is not None else int(rate * 2),
                connect_override={**(connect_override or {}), **(per_notary_overrides[i] if per_notary_overrides else {})},
                conn_limits=conn_limits or ConnLimits(),
            )
            kwargs = {"resolver": resolver}
            if i in relays:
                kwargs["relay"] = RelayConfig.sized_for(  # type: ignore[assignment]
                    gateways, policy, gateway_rate=rate, gateway_burst=burst if burst is not None else int(rate * 2))
            if clock is not None:
                kwargs["clock"] = clock  # type: ignore[assignment]
            app = create_app(cfg, key, **kwargs)  # type: ignore[arg-type]
            try:
                runner, _ = await start_serving(app, host, sock.getsockname()[1], app[GUARD], sock=sock)
            except BaseException:
                sock.close()
                raise
            cluster.runners.append(runner)
            cluster.apps.append(app)
            cluster.keys.append(key)
            entries.append(BundleEntry(cfg.name, url, region, key.key_id, key.verify_key.b64, relay=i in relays))
            gateways[key.key_id] = url
        cluster.bundle = Bundle(tuple(entries))
        cluster.bundle_path.write_text(json.dumps(cluster.bundle.to_json(), indent=2) + "\n")
        yield cluster
    finally:
        for runner in cluster.runners:
            with contextlib.suppress(Exception):
                await runner.cleanup()
