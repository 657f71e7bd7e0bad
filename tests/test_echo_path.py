"""The echo path's own pieces (issue #16): the memory dedupe store's plain-call fast path and
its accounting, the plain-number counters, the handler cache's bound."""

from __future__ import annotations

import msgpack
from prometheus_client import CollectorRegistry, Counter, generate_latest

from server.idempotency import ENTRY_OVERHEAD, PENDING, TOO_LARGE, MemoryIdempotencyStore
from server.metrics import PlainCounter


def weight(store: MemoryIdempotencyStore) -> int:
    """What the store's entries weigh, counted from scratch."""
    return sum(len(k) + len(v) + ENTRY_OVERHEAD for k, (_, v) in store._items.items())


async def test_memory_store_counts_its_bytes_through_claims_and_completes():
    store = MemoryIdempotencyStore(max_reply_bytes=64, max_bytes=10_000)
    for i in range(200):
        assert store.claim_now(f"k{i}", 30) == (True, None)
        assert store.size_bytes() == weight(store)
        store.complete_now(f"k{i}", {"ok": True, "n": i} if i % 3 else {"blob": "x" * 100}, 30)
        assert store.size_bytes() == weight(store) <= 10_000
    assert store.claim_now("k199", 30) == (False, {"ok": True, "n": 199})
    assert store.claim_now("k198", 30) == (False, TOO_LARGE)  # its ack was over max_reply_bytes
    assert store.claim_now("k0", 30) == (True, None)  # the oldest made room
    store.claim_now("running", 30)
    assert store.claim_now("running", 30) == (False, PENDING)
    assert await store.claim("running", 30) == (False, PENDING)  # the async face says the same
    await store.release("running")
    assert store.size_bytes() == weight(store)


async def test_memory_store_packs_acks_as_msgpack_did():
    store = MemoryIdempotencyStore()
    ack = {"ok": True, "set": {1, 2}, "nested": [1, "a", None, 2.5]}
    store.claim_now("k", 30)
    store.complete_now("k", ack, 30)
    assert store._items["k"][1] == msgpack.packb(ack, default=repr)


def test_plain_counters_read_as_prometheus_counters():
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    events = PlainCounter("x_events", "Events", "namespace", registry=ours)
    bytes_in = PlainCounter("x_bytes", "Bytes", registry=ours)
    ref_events = Counter("x_events_total", "Events", ["namespace"], registry=theirs)
    ref_bytes = Counter("x_bytes_total", "Bytes", registry=theirs)
    events.labels("/a").inc()
    events.counts["/a"] += 2  # what the event path does
    events.labels("/b").inc(5)
    bytes_in.value += 7
    bytes_in.inc(3)
    ref_events.labels("/a").inc(3)
    ref_events.labels("/b").inc(5)
    ref_bytes.inc(10)

    def exposition(registry):
        """The /metrics text, the _created timestamps masked (they differ by microseconds)."""
        return [line.rsplit(" ", 1)[0] if "_created{" in line or line.startswith("x_bytes_created ") else line
                for line in generate_latest(registry).decode().splitlines()]

    assert exposition(ours) == exposition(theirs)


class _Runtime:
    def __init__(self) -> None:
        from types import SimpleNamespace
        self.config = SimpleNamespace()
        self.stores = self.metrics = self.authenticator = None
        self.identities = {}


async def test_handler_cache_keeps_only_known_events():
    from namespaces.bench import BenchNamespace

    ns = BenchNamespace("/bench", _Runtime())
    for i in range(100):
        ack = await ns.handle_event(f"nope{i}", "sid")
        assert ack["error"]["code"] == "unknown_event"
    assert (await ns.handle_event("_private", "sid"))["error"]["code"] == "unknown_event"
    assert await ns.handle_event("echo", "sid", {"a": 1}) == {"a": 1}
    assert await ns.handle_event("echo", "sid", [2]) == [2]
    assert list(ns._handlers) == ["echo"]  # a client's made-up names are not remembered
