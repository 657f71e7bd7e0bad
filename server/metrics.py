"""Metrics: Prometheus counters and gauges, in a registry owned by one app (no globals)."""

from __future__ import annotations

import time
from typing import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily


class PlainCounter:
    """A Prometheus counter counted in plain numbers, read at scrape time: for the counters
    every event adds to (``Counter.inc`` is five Python calls and a lock; this is an addition).
    ``/metrics`` reads as a ``Counter`` of the same name would (``_total`` and ``_created``).

    The event path adds to :attr:`value` (no labels) or to :attr:`counts` (one label: keyed by
    the label's value; a value not in it yet is added through :meth:`labels`, which stamps its
    ``_created``).

    :param name: the metric's name, without ``_total``.
    :param documentation: its help text.
    :param labelname: its one label, or None for none.
    :param registry: where it is collected.
    """

    def __init__(self, name: str, documentation: str, labelname: str | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.name = name
        self.documentation = documentation
        self.labelname = labelname
        self.value = 0  # the count of an unlabelled counter
        self.counts: dict[str, float] = {}  # label value -> count, for a labelled one
        self._created: dict[str | None, float] = {None: time.time()}
        if registry is not None:
            registry.register(self)

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def labels(self, value: str) -> "_PlainChild":
        """The count of one label value (made, at 0, if new)."""
        if value not in self.counts:
            self.counts[value] = 0
            self._created[value] = time.time()
        return _PlainChild(self.counts, value)

    def collect(self) -> Iterator[CounterMetricFamily]:
        if self.labelname is None:
            family = CounterMetricFamily(self.name, self.documentation, labels=())
            family.add_metric((), self.value, created=self._created[None])
        else:
            family = CounterMetricFamily(self.name, self.documentation, labels=(self.labelname,))
            for value, count in list(self.counts.items()):
                family.add_metric((value,), count, created=self._created[value])
        yield family


class _PlainChild:
    __slots__ = ("counts", "key")

    def __init__(self, counts: dict[str, float], key: str) -> None:
        self.counts = counts
        self.key = key

    def inc(self, amount: float = 1) -> None:
        self.counts[self.key] += amount


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.connections = Gauge("rt_connections", "Connected sockets", ["namespace", "transport"], registry=r)
        self.connects = Counter("rt_connects_total", "Namespace connections accepted", ["namespace"], registry=r)
        self.connect_refused = Counter("rt_connect_refused_total", "Namespace connections refused",
                                       ["namespace", "reason"], registry=r)
        self.upgrades = Counter("rt_transport_upgrades_total", "Polling to WebSocket upgrades", registry=r)
        # Added to per event (server/realtime.py RealtimeServer.eio_message, _dispatch): plain numbers.
        self.events_in = PlainCounter("rt_events_in", "Events received from clients", "namespace", registry=r)
        self.events_logged = Counter("rt_events_logged_total", "Durable events published to channels",
                                     ["namespace"], registry=r)
        self.deliveries = Counter("rt_deliveries_total", "Event packets queued to sockets", ["namespace"], registry=r)
        self.bytes_in = PlainCounter("rt_bytes_in", "Socket.IO payload bytes received", registry=r)
        self.bytes_out = Counter("rt_bytes_out_total", "Socket.IO payload bytes queued to sockets", registry=r)
        self.recoveries = Counter("rt_recoveries_total", "Connection state recoveries", ["namespace", "result"],
                                  registry=r)
        self.replayed = Counter("rt_replayed_events_total", "Events replayed on recovery or resume",
                                ["namespace"], registry=r)
        self.dedupe_hits = Counter("rt_dedupe_hits_total", "Client events recognised as duplicates",
                                   ["namespace"], registry=r)
        self.rate_limited = Counter("rt_rate_limited_total", "Client events refused by rate limit",
                                    ["namespace"], registry=r)
        self.volatile_dropped = Counter("rt_volatile_dropped_total", "Volatile packets dropped for slow clients",
                                        registry=r)
        self.slow_consumers = Counter("rt_slow_consumers_total", "Sockets disconnected as slow consumers",
                                      registry=r)
        self.protocol_errors = Counter("rt_protocol_errors_total", "Connections closed for malformed input",
                                       ["kind"], registry=r)
        self.redis_errors = Counter("rt_redis_errors_total", "Errors talking to Redis", registry=r)
        self.redis_rtt = Histogram("rt_redis_rtt_seconds", "Redis PING round-trip time", registry=r,
                                   buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1))
        self.channels_subscribed = Gauge("rt_channels_subscribed", "Channels this node follows (those its "
                                         "sockets are in)", registry=r)
        self.channel_reads = Counter("rt_channel_history_reads_total", "Channel history reads, by reason "
                                     "(recovery: a reconnecting socket's channels; gap: a missed notification)",
                                     ["reason"], registry=r)
        self.send_queue = Gauge("rt_send_queue_packets", "Packets waiting in socket send queues (sum)", registry=r)
        self.internal = Gauge("rt_internal_entries", "Entries in per-connection tables (leak detection)",
                              ["table"], registry=r)
        self.handler_errors = Counter("rt_handler_errors_total", "Client events and connects answered with an "
                                      "error because a store was unavailable or a handler failed",
                                      ["namespace", "code"], registry=r)
        self.backpressure_pauses = Counter("rt_backpressure_pauses_total", "Times reading from a connection "
                                           "paused because max_inflight_events of its events were waiting",
                                           registry=r)
        self.operator_logins = Counter("rt_operator_logins_total", "Operator logins to /admin by result "
                                       "(ok, failed, locked: refused during a lockout)", ["result"], registry=r)
        self.operator_refused = Counter("rt_operator_commands_refused_total", "Operator commands refused, by "
                                        "error code (the Admin UI shows no error)", ["code"], registry=r)
        self.direct_pending = Counter("rt_direct_retries_total", "Direct messages re-sent awaiting an ack",
                                      registry=r)
        self.api_requests = Counter("rt_api_requests_total", "Server API requests by key name (\"-\" before a "
                                    "key is recognised), route and HTTP status", ["key", "route", "status"],
                                    registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
