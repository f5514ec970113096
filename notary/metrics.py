"""The notary's Prometheus metrics: what ``GET /metrics`` exports.

:func:`make_metrics` builds the collectors in a registry of the app's own
(never the process-global one: several apps may share a process in tests);
:class:`RequestCounts` counts requests by route and status code without a lock
on the request path; :func:`probe_counter` is a probe-status child looked up once.
"""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily

__all__ = ["RequestCounts", "make_metrics", "probe_counter"]


class RequestCounts:
    """``parallax_http_requests_total`` by route and status code.

    Plain integers on the request path (a prometheus ``Counter`` child takes a
    lock on every increment); exported as a counter family when /metrics is read.
    """

    def __init__(self) -> None:
        self.counts: dict[tuple[str, int], int] = {}

    def count(self, route: str, code: int) -> None:
        key = (route, code)
        self.counts[key] = self.counts.get(key, 0) + 1

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("parallax_http_requests", "HTTP requests by route and status code",
                                     labels=["route", "code"])
        for (route, code), n in sorted(self.counts.items()):
            family.add_metric([route, str(code)], n)
        yield family


def probe_counter(metrics: dict[str, Any], status: str) -> Any:
    """The ``parallax_probes`` child for ``status``, looked up once (``labels()`` is slow)."""
    children = metrics.setdefault("_probe_children", {})
    child = children.get(status)
    if child is None:
        child = children[status] = metrics["probes"].labels(status=status)
    return child


def make_metrics(registry: CollectorRegistry) -> dict[str, Any]:
    return {
        "probes": Counter("parallax_probes", "Probes by result status", ["status"], registry=registry),
        "inflight": Gauge("parallax_probes_inflight", "Probes in flight", registry=registry),
        "probe_seconds": Histogram("parallax_probe_seconds", "Probe duration", registry=registry),
        "connections": Gauge("parallax_connections_open", "Client connections open now", registry=registry),
        "conn_events": Gauge("parallax_connection_events", "Connections refused (client, global cap) or closed "
                             "(head, idle deadline) since start", ["event"], registry=registry),
        "freshness": Gauge("parallax_freshness_signed", "Freshness statements signed and leaves (answers) they "
                           "covered since start: leaves / statements is the mean batch size", ["kind"], registry=registry),
        "queued": Gauge("parallax_probes_queued", "Probes waiting for a slot", registry=registry),
        "rate_overflow": Gauge("parallax_rate_limit_overflowed", "Rate-limit checks charged to the shared overflow "
                               "bucket since start: keys not in the bucket table while it was full of draining "
                               "buckets (a key flood)", registry=registry),
        "ohttp": Counter("parallax_ohttp_decapsulations", "Oblivious HTTP messages the gateway tried to decrypt, "
                         "by result (decapsulated, rejected)", ["result"], registry=registry),
    }
