"""The audit trail of generations: sealed per user, so erasure works on an immutable log.

Every `ctx.generate` on a node with an audit log appends a
`GenerationAudited` record. Its prompt and response are encrypted
(AES-256-GCM) with the data key of the user the agent acts for
(`ctx.on_behalf_of`); keys live in the state store. Erasing a user's data
destroys the key, so the log can deny delete and purge and still forget.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import uuid
from typing import TYPE_CHECKING, Final

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from actors._state import state_key
from messages import (
    AgentError,
    GenerateRequest,
    GenerateResult,
    GenerationAudited,
    Metadata,
    SealedExchange,
    Unavailable,
    prompt_text,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from actors._ports import AuditLog, GenerationStream, StateStore
    from messages import TokenChunk

logger: Final = logging.getLogger("actorfleet.audit")

# The subject of generations made for no user in particular.
SERVICE_SUBJECT: Final = ""
_NONCE: Final = 12
_KEY_BITS: Final = 256
_CLAIM_ATTEMPTS: Final = 3
_IDS_ATTEMPTS: Final = 8
_exchange_decoder: Final = msgspec.msgpack.Decoder(SealedExchange)
_key_decoder: Final = msgspec.msgpack.Decoder(tuple[str, bytes])
_ids_decoder: Final = msgspec.msgpack.Decoder(list[str])


def _with_id(ids: list[str], *, made: str) -> list[str]:
    return [*ids, made]


class DataKeys:
    """Per-subject (user) data keys in the state store.

    * `auditkey.user.<subject>`: the subject's current key id and key (one
      read per message);
    * `auditkey.id.<key id>`: the key by id, to open records later;
    * `auditkey.ids.<subject>`: the ids of every key made for the subject
      and not destroyed yet, written first, so that destroying finds each
      one even if a key was being made while the subject was erased.

    Each is read by its name; none needs a `scan`, so a store may keep them
    where they cannot be listed (the KV store keeps them in a bucket of their
    own that the node's NATS user may not list). Keys that earlier versions
    indexed under `auditkey.index.<subject>.<key id>` are still found there.
    """

    def __init__(
        self,
        store: StateStore,
        *,
        memo: dict[str, tuple[str, bytes]] | None = None,
        fence: Callable[[str], ErasureFence] | None = None,
    ) -> None:
        self.store = store
        # Keys already read while handling one message (never kept longer:
        # another node may destroy a key at any time).
        self.memo = memo
        # The message's fence per subject: no new key for a subject erased since it began.
        self.fence = fence

    def current(self, subject: str) -> tuple[str, bytes]:
        """The subject's key id and key, made on first use (one winner among racers).

        Raises:
            messages.Unavailable: If the store cannot settle a key.
        """
        if self.memo is not None and subject in self.memo:
            return self.memo[subject]
        held = self._current(subject)
        if self.memo is not None:
            self.memo[subject] = held
        return held

    def _current(self, subject: str) -> tuple[str, bytes]:
        pointer = state_key("auditkey", "user", subject)
        for _ in range(_CLAIM_ATTEMPTS):
            held = self.store.get(pointer)
            if held is not None:
                key_id, secret = _key_decoder.decode(held)
                return key_id, secret
            self._check_fence(subject, None)
            new_id, secret = uuid.uuid4().hex, AESGCM.generate_key(bit_length=_KEY_BITS)
            self._change_ids(subject, functools.partial(_with_id, made=new_id))
            self.store.put(state_key("auditkey", "id", new_id), secret)
            if self.store.compare_and_set(pointer, None, msgspec.msgpack.encode((new_id, secret))):
                self._check_fence(subject, new_id)
                return new_id, secret
            self._forget(subject, new_id)  # another writer won
        msg = f"could not settle a data key for subject {subject!r}"
        raise Unavailable(msg)

    def _check_fence(self, subject: str, made: str | None) -> None:
        """Refuse (and undo `made`) if the subject was erased since the message began.

        Checked before making a key and again after: an erasure that ran in
        between would otherwise miss the new key.

        Raises:
            messages.Unavailable: With `retry_after`, if the fence is broken.
        """
        if self.fence is None:
            return
        try:
            self.fence(subject).check()
        except Unavailable:
            if made is not None:
                self.store.delete(state_key("auditkey", "user", subject))
                self._forget(subject, made)
            raise

    def secret(self, key_id: str) -> bytes | None:
        """The key with this id, or None once it has been destroyed."""
        return self.store.get(state_key("auditkey", "id", key_id))

    def ids(self, subject: str) -> list[str]:
        """Every key id the subject has (that is not destroyed yet)."""
        raw = self.store.get(state_key("auditkey", "ids", subject))
        listed = [] if raw is None else _ids_decoder.decode(raw)
        earlier = self.store.scan(state_key("auditkey", "index", subject))
        return list(dict.fromkeys(listed + [k.rsplit(".", 1)[-1] for k in earlier]))

    def _change_ids(self, subject: str, change: Callable[[list[str]], list[str]]) -> None:
        """Apply `change` to the subject's key ids, atomically; no ids left: no entry.

        Raises:
            messages.Unavailable: If the ids keep changing under it.
        """
        key = state_key("auditkey", "ids", subject)
        for _ in range(_IDS_ATTEMPTS):
            raw = self.store.get(key)
            ids = change([] if raw is None else _ids_decoder.decode(raw))
            if not ids:
                if raw is not None:
                    self.store.delete(key)  # racing makers hold the fence: they undo theirs
                return
            if self.store.compare_and_set(key, raw, msgspec.msgpack.encode(ids)):
                return
        msg = f"the data key ids of subject {subject!r} kept changing"
        raise Unavailable(msg)

    def destroy(self, subject: str) -> list[str]:
        """Destroy every key of the subject; return the ids destroyed."""
        key_ids = self.ids(subject)
        self.store.delete(state_key("auditkey", "user", subject))
        for key_id in key_ids:
            self._forget(subject, key_id)
        return key_ids

    def _forget(self, subject: str, key_id: str) -> None:
        self.store.delete(state_key("auditkey", "id", key_id))
        self._change_ids(subject, lambda ids: [i for i in ids if i != key_id])
        self.store.delete(state_key("auditkey", "index", subject, key_id))


ERASURE_FENCE_TTL: Final = 24 * 3600.0
ERASURE_RETRY_AFTER: Final = 1.0
"""Seconds a request refused by an erasure in progress is told to wait."""
ERASURE_RUNNING_LIMIT: Final = 60.0
"""Seconds after which an erasure still marked running counts as abandoned.

An erasure that crashed between its begin and its end would otherwise turn
the user's requests away until the mark expires (a day); its retry opens a
new epoch anyway. Far longer than an erasure takes, and than clocks differ.
"""
_mark_decoder: Final = msgspec.msgpack.Decoder(list[int | bool | float])
_MARK_ATTEMPTS: Final = 8
_LEGACY_MARK: Final = (1, False)
_MARK_FIELDS: Final = 3


def _decode_mark(raw: bytes | None) -> tuple[int, bool]:
    """An erasure mark: its epoch, and whether that erasure runs (and is not abandoned).

    A mark from before epochs (a timestamp) reads as one erasure, done.
    """
    if raw is None:
        return (0, False)
    try:
        mark = _mark_decoder.decode(raw)
    except msgspec.DecodeError:
        return _LEGACY_MARK
    if len(mark) == _MARK_FIELDS:
        epoch, running, began = mark
        return int(epoch), bool(running) and time.time() - began < ERASURE_RUNNING_LIMIT
    if len(mark) != _MARK_FIELDS - 1:
        return _LEGACY_MARK
    epoch, running = mark
    return int(epoch), bool(running)


def _erasure_mark(store: StateStore, subject: str) -> tuple[int, bool]:
    """The subject's erasure epoch (0: never erased) and whether one is in progress."""
    return _decode_mark(store.get(state_key("erased", subject)))


def begin_erasure(store: StateStore, subject: str) -> int:
    """Open a new erasure epoch for the subject, in progress; return it.

    From now on every message that began under an earlier epoch writes
    nothing back for the subject (`ErasureFence`), and one that begins
    while the erasure runs (for at most `ERASURE_RUNNING_LIMIT`) is
    refused with a `retry_after`.

    Raises:
        messages.Unavailable: If the mark keeps changing under it.
    """
    key = state_key("erased", subject)
    for _ in range(_MARK_ATTEMPTS):
        raw = store.get(key)
        epoch = _decode_mark(raw)[0]
        marked = msgspec.msgpack.encode((epoch + 1, True, time.time()))
        if store.compare_and_set(key, raw, marked, ttl=ERASURE_FENCE_TTL):
            return epoch + 1
    msg = f"could not mark {subject!r} erased: the mark kept changing"
    raise Unavailable(msg, retry_after=ERASURE_RETRY_AFTER)


def end_erasure(store: StateStore, subject: str, epoch: int) -> None:
    """Say that the erasure of `epoch` is done: messages that begin now run normally.

    A later erasure that began meanwhile keeps its own mark.
    """
    key = state_key("erased", subject)
    raw = store.get(key)
    if raw is None or _decode_mark(raw)[0] != epoch:
        return
    store.compare_and_set(key, raw, msgspec.msgpack.encode((epoch, False)), ttl=ERASURE_FENCE_TTL)


class ErasureFence:
    """A subject's erasure mark as a message saw it when it began.

    Read before the message reads anything of the subject's; checked again
    before it writes back what it read (memory, a ticket, a new data key).
    An erasure that began since, or one running when the message began,
    breaks the fence: the write is not made (or is undone). Epochs, not
    clocks: a message that begins after an erasure completed runs normally,
    on any node, whatever their clocks say.
    """

    __slots__ = ("_seen", "store", "subject")

    def __init__(self, store: StateStore, subject: str) -> None:
        self.store = store
        self.subject = subject
        self._seen = _erasure_mark(store, subject)

    def check_not_running(self) -> None:
        """Refuse to begin while an erasure of the subject is in progress.

        Raises:
            messages.Unavailable: With `retry_after`, if one was running when
                the message began.
        """
        if self._seen[1]:
            msg = "the user's data is being erased; send the request again"
            raise Unavailable(msg, retry_after=ERASURE_RETRY_AFTER)

    def broken(self) -> bool:
        """Whether an erasure began since the message began, or was running then."""
        seen_epoch, was_running = self._seen
        epoch, running = _erasure_mark(self.store, self.subject)
        return was_running or running or epoch != seen_epoch

    def check(self) -> None:
        """Refuse to go on if `broken()`.

        Raises:
            messages.Unavailable: With `retry_after`: send the request again.
        """
        if self.broken():
            msg = "the user's data is being or was erased while this request ran; send it again"
            raise Unavailable(msg, retry_after=ERASURE_RETRY_AFTER)


def seal(secret: bytes, exchange: SealedExchange, *, key_id: str) -> bytes:
    """Encrypt an exchange; the key id is bound in as associated data."""
    nonce = os.urandom(_NONCE)
    return nonce + AESGCM(secret).encrypt(nonce, msgspec.msgpack.encode(exchange), key_id.encode())


def unseal(secret: bytes, sealed: bytes, *, key_id: str) -> SealedExchange | None:
    """Decrypt what `seal` made; None if it does not open with this key."""
    try:
        plain = AESGCM(secret).decrypt(sealed[:_NONCE], sealed[_NONCE:], key_id.encode())
    except InvalidTag:
        return None
    return _exchange_decoder.decode(plain)


class Auditor:
    """Appends the records of one agent's generations for one subject and conversation."""

    def __init__(
        self,
        log: AuditLog,
        keys: DataKeys,
        *,
        node: str,
        agent: str,
        subject: str,
        conversation_id: str | None,
    ) -> None:
        self.log = log
        self.keys = keys
        self.node = node
        self.agent = agent
        self.subject = subject
        self.conversation_id = conversation_id

    def record(
        self,
        request: GenerateRequest,
        meta: Metadata,
        *,
        started: float,
        result: GenerateResult | None,
        response: str = "",
        error: AgentError | None = None,
    ) -> None:
        """Append the record of a finished, stopped or failed generation.

        Raises:
            messages.Unavailable: If the record cannot be stored (the caller
                then does not hand the response on: no unaudited output).
        """
        key_id, secret = self.keys.current(self.subject)
        text = result.text if result is not None else response
        exchange = SealedExchange(prompt=prompt_text(request), response=text)
        usage = result.usage if result is not None else None
        self.log.append(
            GenerationAudited(
                at=time.time(),
                node=self.node,
                agent=self.agent,
                request_id=meta.id,
                correlation_id=meta.correlation_id,
                conversation_id=self.conversation_id,
                model=result.model if result else "",
                tier=result.tier if result else "",
                backend=result.backend if result else "",
                outcome=_outcome(result, error),
                prompt_tokens=usage.prompt_tokens if usage else 0,
                completion_tokens=usage.completion_tokens if usage else 0,
                queue_s=usage.queue_s if usage else 0.0,
                prefill_s=usage.prefill_s if usage else 0.0,
                generate_s=usage.generate_s if usage else 0.0,
                total_s=time.time() - started,
                key_id=key_id,
                sealed=seal(secret, exchange, key_id=key_id),
            )
        )

    def failed(
        self, request: GenerateRequest, meta: Metadata, *, started: float, error: AgentError
    ) -> None:
        """Record a failed generation; a failure to record is logged, the error stands."""
        try:
            self.record(request, meta, started=started, result=None, error=error)
        except AgentError:
            logger.warning("could not audit the failed generation %s", meta.id, exc_info=True)


def _outcome(result: GenerateResult | None, error: AgentError | None) -> str:
    if error is not None:
        return str(error.code)
    return "ok" if result is not None else "stopped"


class AuditedStream:
    """A generation stream that appends its record when it ends, fails or is stopped.

    Chunks reach the caller as they come; the record is stored when the
    stream ends, and if it cannot be, the stream ends with that error
    instead of its result.
    """

    def __init__(
        self,
        stream: GenerationStream,
        done: Callable[[GenerateResult | None, str, AgentError | None], None],
    ) -> None:
        self._stream = stream
        self._done = done
        self._text: list[str] = []
        self._recorded = False

    def __iter__(self) -> Iterator[TokenChunk]:
        result: GenerateResult | None = None
        error: AgentError | None = None
        try:
            for chunk in self._stream:
                self._text.append(chunk.text)
                yield chunk
            result = self._stream.result
        except AgentError as exc:
            error = exc
            raise
        finally:
            self._finish(result, error)

    @property
    def result(self) -> GenerateResult:
        """The final result (after the iteration has ended)."""
        return self._stream.result

    def close(self) -> None:
        """Stop early; the record holds what was generated so far."""
        self._stream.close()
        self._finish(None, None)

    def _finish(self, result: GenerateResult | None, error: AgentError | None) -> None:
        if not self._recorded:
            self._recorded = True
            self._done(result, "".join(self._text), error)
