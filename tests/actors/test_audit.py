"""Audit sealing: per-user data keys, sealing, and the erasure fence."""

from __future__ import annotations

import time

import msgspec
import pytest

from actors import (
    DataKeys,
    ErasureFence,
    MemoryStore,
    begin_erasure,
    end_erasure,
    seal,
    state_key,
    unseal,
)
from actors._audit import ERASURE_RETRY_AFTER, ERASURE_RUNNING_LIMIT
from messages import SealedExchange, Unavailable


def test_a_sealed_exchange_opens_only_with_its_key_and_key_id() -> None:
    store = MemoryStore()
    key_id, secret = DataKeys(store).current("jane")
    exchange = SealedExchange(prompt="my card is 4111", response="noted")
    sealed = seal(secret, exchange, key_id=key_id)
    assert b"4111" not in sealed
    assert unseal(secret, sealed, key_id=key_id) == exchange
    assert unseal(secret, sealed, key_id="another") is None
    other = DataKeys(store).current("joe")[1]
    assert unseal(other, sealed, key_id=key_id) is None
    assert DataKeys(store).current("jane") == (key_id, secret)  # one key per subject


def test_a_subject_erased_during_a_message_gets_no_new_data_key() -> None:
    store = MemoryStore()
    in_flight = ErasureFence(store, "jane")  # a message began before the erasure
    before = DataKeys(store).current("jane")
    epoch = begin_erasure(store, "jane")
    assert DataKeys(store).destroy("jane") == [before[0]]
    begun_during = ErasureFence(store, "jane")  # and one while it ran
    for fence in (in_flight, begun_during):
        with pytest.raises(Unavailable, match="erased while this request ran") as refused:
            DataKeys(store, fence=lambda _s, f=fence: f).current("jane")
        assert refused.value.retry_after == ERASURE_RETRY_AFTER
    end_erasure(store, "jane", epoch)
    # A message that begins once the erasure is done makes a fresh key, at once.
    after = ErasureFence(store, "jane")
    later = DataKeys(store, fence=lambda _s: after).current("jane")
    assert later[0] != before[0]
    assert DataKeys(store).secret(before[0]) is None
    # The one that began before still writes nothing.
    assert in_flight.broken()
    assert not after.broken()


def test_a_second_erasure_breaks_the_fences_of_messages_begun_after_the_first() -> None:
    store = MemoryStore()
    end_erasure(store, "jane", begin_erasure(store, "jane"))
    between = ErasureFence(store, "jane")
    assert not between.broken()
    second = begin_erasure(store, "jane")
    assert between.broken()
    end_erasure(store, "jane", second)
    assert between.broken()  # it read before the second erasure: still fenced


def test_destroying_finds_every_key_a_subject_ever_had() -> None:
    store = MemoryStore()
    first = DataKeys(store).current("joe")[0]
    store.delete(state_key("auditkey", "user", "joe"))  # as if a race lost the pointer
    second = DataKeys(store).current("joe")[0]
    assert sorted(DataKeys(store).destroy("joe")) == sorted([first, second])
    assert DataKeys(store).secret(first) is None
    assert DataKeys(store).secret(second) is None


def test_an_erasure_mark_from_before_epochs_reads_as_one_erasure_done() -> None:
    store = MemoryStore()
    store.put(state_key("erased", "jane"), repr(time.time()).encode(), ttl=60)  # the old format
    fence = ErasureFence(store, "jane")
    assert not fence.broken()
    fence.check_not_running()
    assert begin_erasure(store, "jane") == 2
    assert fence.broken()


def test_a_message_that_begins_while_an_erasure_runs_is_refused_with_retry_after() -> None:
    store = MemoryStore()
    epoch = begin_erasure(store, "jane")
    with pytest.raises(Unavailable, match="being erased") as refused:
        ErasureFence(store, "jane").check_not_running()
    assert refused.value.retry_after == ERASURE_RETRY_AFTER
    end_erasure(store, "jane", epoch)
    ErasureFence(store, "jane").check_not_running()


def test_an_erasure_that_died_before_its_end_does_not_lock_the_user_out() -> None:
    store = MemoryStore()
    begin_erasure(store, "jane")  # ... and its node crashed before end_erasure
    with pytest.raises(Unavailable, match="being erased"):
        ErasureFence(store, "jane").check_not_running()
    # As it stands a little over the limit later: abandoned, not running.
    started = time.time() - ERASURE_RUNNING_LIMIT - 1
    store.put(state_key("erased", "jane"), msgspec.msgpack.encode((1, True, started)))
    fence = ErasureFence(store, "jane")
    fence.check_not_running()
    fence.check()  # nothing began since, and nothing runs
    # Its retry opens a new epoch and ends it: requests that began before it are fenced.
    end_erasure(store, "jane", begin_erasure(store, "jane"))
    assert fence.broken()
    ErasureFence(store, "jane").check()
