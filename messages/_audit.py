"""Audit records: what the audit log stream (`<prefix>.audit.>`) keeps for good.

The stream denies delete and purge, so records carry no personal data in the
clear: a generation's prompt and response are sealed with the data key of
the user it was made for, and erasing the user's data destroys that key
(crypto-shredding), leaving the records' metadata and an unreadable blob.
"""

from __future__ import annotations

from messages._base import Message


class GenerationAudited(Message, frozen=True, kw_only=True):
    """One prompt/response pair, as the agent that asked for it saw it.

    Attributes:
        at: When the generation ended (epoch seconds).
        node: The node the agent ran on.
        agent: The agent (`type/instance`).
        request_id: The generation's message id.
        correlation_id: The message the agent was handling.
        conversation_id: The conversation, if the agent named one.
        model: The model that answered ("" if none did).
        tier: The tier that answered ("" if none did).
        backend: `exllamav2`, `openai`, `scripted` ("" if none answered).
        outcome: `ok`, or the error code the generation failed with.
        prompt_tokens: Tokens in the prompt.
        completion_tokens: Tokens generated.
        queue_s: Seconds queued in the pool.
        prefill_s: Seconds to the first token.
        generate_s: Seconds from the first token to the last.
        total_s: Seconds the agent waited in all.
        key_id: The data key that sealed `sealed` (erased with the user's data).
        sealed: The prompt and response (`SealedExchange`), AES-GCM encrypted.
    """

    at: float
    node: str
    agent: str
    request_id: str
    correlation_id: str | None = None
    conversation_id: str | None = None
    model: str = ""
    tier: str = ""
    backend: str = ""
    outcome: str = "ok"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    queue_s: float = 0.0
    prefill_s: float = 0.0
    generate_s: float = 0.0
    total_s: float = 0.0
    key_id: str
    sealed: bytes


class SealedExchange(Message, frozen=True, kw_only=True):
    """What `GenerationAudited.sealed` holds once opened."""

    prompt: str
    response: str


class UserDataErased(Message, frozen=True, kw_only=True):
    """A user's data was erased (right to be forgotten), recorded without the user's id.

    Attributes:
        at: When (epoch seconds).
        node: The node that erased it.
        request_id: The erasure request's message id.
        key_ids: The data keys destroyed: their audit records can no longer be opened.
        conversations: Conversation memories deleted.
        tickets: Tickets whose personal data was redacted.
    """

    at: float
    node: str
    request_id: str
    key_ids: list[str]
    conversations: int = 0
    tickets: int = 0


AuditRecord = GenerationAudited | UserDataErased
