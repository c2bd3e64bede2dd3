"""Audit sealing: per-user data keys, sealing, and the erasure fence."""

from __future__ import annotations

import time

import pytest

from actors import DataKeys, MemoryStore, seal, state_key, unseal
from actors._audit import mark_erased
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
    started = time.time()
    before = DataKeys(store).current("jane")
    mark_erased(store, "jane")
    assert DataKeys(store).destroy("jane") == [before[0]]
    with pytest.raises(Unavailable, match="erased while this request ran"):
        DataKeys(store, since=started).current("jane")
    # A message that starts after the erasure makes a fresh key.
    later = DataKeys(store, since=time.time() + 1).current("jane")
    assert later[0] != before[0]
    assert DataKeys(store).secret(before[0]) is None


def test_destroying_finds_every_key_a_subject_ever_had() -> None:
    store = MemoryStore()
    first = DataKeys(store).current("joe")[0]
    store.delete(state_key("auditkey", "user", "joe"))  # as if a race lost the pointer
    second = DataKeys(store).current("joe")[0]
    assert sorted(DataKeys(store).destroy("joe")) == sorted([first, second])
    assert DataKeys(store).secret(first) is None
    assert DataKeys(store).secret(second) is None
