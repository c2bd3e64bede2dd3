"""PII at rest: values sealed with their user's data key, so erasing the key erases every copy.

What a service keeps about a user in the state store (ticket texts,
conversation memory) is encrypted (AES-256-GCM) with the user's data key,
the same key their audit records are sealed with (`DataKeys`). Destroying
the key on erasure makes each copy unreadable, wherever it is: replicas,
backups, the KV bucket's history. Each sealed value is bound to where it
is kept (`where`, e.g. its state key), so one cannot be moved onto another
record.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Final

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

if TYPE_CHECKING:
    from actors._audit import DataKeys

_NONCE: Final = 12


class SealedValue(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """A value encrypted with a subject's data key.

    Attributes:
        key_id: The data key it is sealed with.
        box: Nonce and AES-GCM ciphertext (with its tag).
    """

    key_id: str
    box: bytes


def seal_value(keys: DataKeys, subject: str, value: bytes, *, where: str) -> SealedValue:
    """`value` sealed with `subject`'s current data key (made on first use), bound to `where`.

    Raises:
        messages.Unavailable: If no key can be settled, or the subject is
            being erased (the key fence).
    """
    key_id, secret = keys.current(subject)
    nonce = os.urandom(_NONCE)
    box = nonce + AESGCM(secret).encrypt(nonce, value, _bound(key_id, where))
    return SealedValue(key_id=key_id, box=box)


def open_value(keys: DataKeys, sealed: SealedValue, *, where: str) -> bytes | None:
    """What `seal_value` sealed; None once its key is destroyed, or if it was moved."""
    secret = keys.secret(sealed.key_id)
    if secret is None:
        return None
    try:
        return AESGCM(secret).decrypt(
            sealed.box[:_NONCE], sealed.box[_NONCE:], _bound(sealed.key_id, where)
        )
    except InvalidTag:
        return None


def _bound(key_id: str, where: str) -> bytes:
    return f"{key_id}|{where}".encode()
