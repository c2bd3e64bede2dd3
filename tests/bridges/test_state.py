"""One suite for every state store: memory, JetStream KV and Redis (real servers)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import nats
import pytest
import redis
from nats.js.api import KeyValueConfig

from actors import MAX_KEY_LENGTH, MemoryStore, StateStore, state_key
from bridges import IoLoop, NatsServer
from bridges.stores import KvStore, LoopStore, RedisStore
from config import NatsSettings, StateSettings
from messages import InvalidKey, Unavailable
from tests.conftest import redis_url

TTL = 0.3  # expiry under test; the waits below are that delay, not synchronisation


@pytest.fixture(params=["memory", "kv", "redis"])
def store(request: pytest.FixtureRequest, io: IoLoop) -> Iterator[StateStore]:
    if request.param == "memory":
        yield MemoryStore()
        return
    if request.param == "kv":
        server = request.getfixturevalue("nats_server")
        assert isinstance(server, NatsServer)
        settings = StateSettings(backend="kv", bucket=f"T{uuid.uuid4().hex[:8]}")
        kv = io.run(KvStore.open(server.url, settings, NatsSettings(), name="t"), timeout=10)
        yield LoopStore(io, kv, timeout=5)
        io.run(kv.close(), timeout=5)
        return
    prefix = f"af-test-{uuid.uuid4().hex[:8]}:"
    settings = StateSettings(backend="redis", redis_url=redis_url(), redis_prefix=prefix)
    backend = io.run(RedisStore.open(settings), timeout=10)
    yield LoopStore(io, backend, timeout=5)
    io.run(backend.close(), timeout=5)
    client = redis.Redis.from_url(redis_url())
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)
    client.close()


def test_a_value_is_read_back_and_deleted(store: StateStore) -> None:
    assert store.get("a.b") is None
    store.put("a.b", b"one")
    assert store.get("a.b") == b"one"
    store.put("a.b", b"two")
    assert store.get("a.b") == b"two"
    store.delete("a.b")
    assert store.get("a.b") is None
    store.delete("a.b")  # deleting what is absent is no error


def test_compare_and_set_claims_an_absent_key_once(store: StateStore) -> None:
    assert store.compare_and_set("idem.m1", None, b"first")
    assert not store.compare_and_set("idem.m1", None, b"second")
    assert store.get("idem.m1") == b"first"


def test_compare_and_set_replaces_only_the_expected_value(store: StateStore) -> None:
    store.put("counter", b"1")
    assert not store.compare_and_set("counter", b"0", b"2")
    assert store.compare_and_set("counter", b"1", b"2")
    assert not store.compare_and_set("counter", None, b"3")
    assert store.get("counter") == b"2"


def test_a_deleted_key_can_be_claimed_again(store: StateStore) -> None:
    assert store.compare_and_set("k", None, b"x")
    store.delete("k")
    assert store.compare_and_set("k", None, b"y")
    assert store.get("k") == b"y"


def test_values_expire_after_their_ttl(store: StateStore) -> None:
    store.put("mem.short", b"v", ttl=TTL)
    store.put("mem.long", b"v")
    assert store.get("mem.short") == b"v"
    time.sleep(TTL + 0.1)  # the expiry under test
    assert store.get("mem.short") is None
    assert store.get("mem.long") == b"v"
    assert store.scan("mem") == ["mem.long"]
    # An expired key counts as absent for compare-and-set.
    assert store.compare_and_set("mem.short", None, b"again", ttl=TTL)


def test_scan_lists_the_live_keys_under_a_prefix(store: StateStore) -> None:
    for key in ("mem.u1.c1", "mem.u1.c2", "mem.u2.c1", "mem.u10.c1", "other.u1"):
        store.put(key, b"v")
    store.put("mem.u3.empty", b"")  # an empty value is a value
    store.delete("mem.u1.c2")
    assert store.scan("mem.u1") == ["mem.u1.c1"]
    assert store.scan("mem") == ["mem.u1.c1", "mem.u10.c1", "mem.u2.c1", "mem.u3.empty"]
    assert store.scan("none") == []


def test_scan_sees_every_key_just_written_every_time(store: StateStore) -> None:
    keys = [f"many.k{n:03d}" for n in range(60)]
    for key in keys:
        store.put(key, b"v")
    for _ in range(20):
        assert store.scan("many") == keys


def test_state_keys_escape_what_no_backend_accepts(store: StateStore) -> None:
    key = state_key("mem", "jane.doe@example.com", "conv 1/ü")
    assert key == "mem.jane=2Edoe=40example=2Ecom.conv=201=2F=C3=BC"
    store.put(key, b"v")
    assert store.scan(state_key("mem", "jane.doe@example.com")) == [key]
    assert state_key("", "x") == "=.x"


def test_a_long_part_is_hashed_so_keys_stay_bounded_and_distinct(store: StateStore) -> None:
    long_user = "ü" * 5000  # 60,000 characters once escaped
    key = state_key("mem", long_user, "c1")
    assert len(key) < 256
    assert key == state_key("mem", long_user, "c1")
    assert key != state_key("mem", long_user + "x", "c1")
    store.put(key, b"v")
    assert store.scan(state_key("mem", long_user)) == [key]


@pytest.mark.parametrize(
    "key",
    [
        "x" * (MAX_KEY_LENGTH + 1),
        "has space",
        "a..b",
        ".a",
        "a.",
        "",
        "a\r\nPUB x 1",
        "wild.*",
        "wild.>",
        "colon:key",
    ],
)
def test_every_store_refuses_a_key_it_cannot_keep_with_a_typed_error(
    store: StateStore, key: str
) -> None:
    for operation in (
        lambda: store.get(key),
        lambda: store.put(key, b"v"),
        lambda: store.delete(key),
        lambda: store.compare_and_set(key, None, b"v"),
        lambda: store.scan(key),
    ):
        with pytest.raises(InvalidKey):
            operation()
    # and the store still serves
    store.put("still.here", b"yes")
    assert store.get("still.here") == b"yes"


def test_concurrent_compare_and_set_lets_exactly_one_writer_win(store: StateStore) -> None:
    winners: list[int] = []
    barrier = threading.Barrier(8)

    def claim(n: int) -> None:
        barrier.wait()
        if store.compare_and_set("race", None, str(n).encode()):
            winners.append(n)

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(winners) == 1
    assert store.get("race") == str(winners[0]).encode()


def test_a_store_whose_server_is_gone_answers_unavailable(
    io: IoLoop, nats_server: NatsServer
) -> None:
    settings = StateSettings(backend="kv", bucket="GONE")
    kv = io.run(KvStore.open(nats_server.url, settings, NatsSettings(), name="t"), timeout=10)
    store = LoopStore(io, kv, timeout=0.5)
    store.put("k", b"v")
    nats_server.stop()
    with pytest.raises(Unavailable, match="GONE is unreachable"):
        store.get("k")
    io.run(kv.close(), timeout=5)


def test_opening_a_redis_that_does_not_answer_is_unavailable(io: IoLoop) -> None:
    settings = StateSettings(backend="redis", redis_url="redis://127.0.0.1:1/0", timeout=0.5)
    with pytest.raises(Unavailable, match="cannot reach Redis"):
        io.run(RedisStore.open(settings), timeout=5)


def test_a_bucket_made_with_other_settings_is_used_as_it_is(
    io: IoLoop, nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    async def make_it() -> None:
        nc = await nats.connect(nats_server.url)
        await nc.jetstream().create_key_value(KeyValueConfig(bucket="OLD", history=5))
        await nc.close()

    io.run(make_it(), timeout=10)
    settings = StateSettings(backend="kv", bucket="OLD")
    kv = io.run(KvStore.open(nats_server.url, settings, NatsSettings(), name="t"), timeout=10)
    store = LoopStore(io, kv, timeout=5)
    assert store.compare_and_set("k", None, b"v")
    assert store.get("k") == b"v"
    assert "exists with other settings" in caplog.text
    io.run(kv.close(), timeout=5)
