"""Notary configuration: one frozen dataclass, built by the CLI or by tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from notary.connguard import ConnLimits
from notary.core import AddressPolicy, Target
from notary.core.addrpolicy import IPNetwork
from notary.prober import ProbeLimits
from notary.retention import RetentionLimits
from notary.service import ServiceLimits

__all__ = ["NotaryConfig", "DB_FILE"]

DB_FILE = "observations.sqlite3"


@dataclass(frozen=True)
class NotaryConfig:
    """Everything a notary needs.  Sizes in bytes, times in seconds, rates per second."""

    data_dir: Path
    name: str = "notary"
    region: str = "unknown"
    url: str | None = None
    country: str | None = None
    rir: str | None = None
    lat_e6: int | None = None
    lon_e6: int | None = None
    policy: AddressPolicy = field(default_factory=AddressPolicy)
    probe_limits: ProbeLimits = field(default_factory=ProbeLimits)
    service_limits: ServiceLimits = field(default_factory=ServiceLimits)
    max_targets: int = 16
    max_body_bytes: int = 64 * 1024
    rate_per_client: float = 20.0
    burst_per_client: int = 40
    watch: tuple[Target, ...] = ()
    rescan_interval: int = 3600
    connect_override: dict[tuple[str, int], tuple[str, int]] = field(default_factory=dict)
    trusted_proxies: tuple[IPNetwork, ...] = ()
    #: Oblivious HTTP relays this notary's operator knows (``--relay-peer``): each is one client
    #: standing for many, so it gets a bucket ``relay_peer_factor`` times larger and no
    #: per-client connection cap.
    relay_peers: tuple[IPNetwork, ...] = ()
    relay_peer_factor: int = 8
    body_timeout: float = 10.0
    conn_limits: ConnLimits = field(default_factory=ConnLimits)
    retention: RetentionLimits = field(default_factory=RetentionLimits)
    max_answer_bytes: int = 1024 * 1024
    rate_limit_delay: float = 1.0

    @property
    def db_path(self) -> Path:
        return Path(self.data_dir) / DB_FILE

    def limits_document(self) -> dict[str, int]:
        """The integer limits advertised in the identity document."""
        return {
            "max_targets": self.max_targets,
            "max_body_bytes": self.max_body_bytes,
            "ttl_seconds": self.service_limits.ttl,
            "connect_timeout_ms": int(self.probe_limits.connect_timeout * 1000),
            "handshake_timeout_ms": int(self.probe_limits.handshake_timeout * 1000),
            "max_handshake_bytes": self.probe_limits.max_handshake_bytes,
            "rate_per_client_milli": int(self.rate_per_client * 1000),
            "burst_per_client": self.burst_per_client,
            "queue_timeout_ms": int(self.service_limits.queue_timeout * 1000),
            "max_probes_per_client": self.service_limits.max_probes_per_client,
            "max_answer_bytes": self.max_answer_bytes,
        }
