"""The scripted backend: deterministic, rule-driven replies for tests and GPU-less runs.

It is named as what it is everywhere it shows (`backend="scripted"` in
results, statistics and logs): nothing it says comes from a model.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final

import jsonschema
import jsonschema.exceptions
import jsonschema.protocols
import jsonschema.validators
import msgspec
import referencing
import referencing.exceptions
import regex

from config import read_rules_file
from inference._backend import Emit, Generation, prompt_text
from messages import (
    BadRequest,
    FinishReason,
    GenerateRequest,
    Metadata,
    OutputInvalid,
    OutputSchema,
)

if TYPE_CHECKING:
    from config import ScriptedBackendSettings

NAME: Final = "scripted"
DEFAULT_REPLY: Final = "I do not have a scripted answer for that."
_WORD: Final = re.compile(r"\S+\s*")
_VALIDATORS: Final = 64  # output schemas whose validators are kept
_REGEX_SECONDS: Final = 0.05  # most one pattern of a caller's schema may take on one reply


class Rule(msgspec.Struct, frozen=True, kw_only=True):
    """Answer `reply` when `pattern` (a regular expression) is found in the prompt.

    Attributes:
        pattern: Searched case-insensitively in the prompt's last line (in
            a chat, the last user message's).
        reply: The text to answer, streamed word by word.
    """

    pattern: str
    reply: str


def _last_line(request: GenerateRequest) -> str:
    """What rules are matched against: the prompt's last line, or the last user message's."""
    text = prompt_text(request)  # checks the request
    if request.messages:
        said = [m.content for m in request.messages if m.role == "user"]
        text = said[-1] if said else request.messages[-1].content
    return text.rstrip().rsplit("\n", 1)[-1]


class ScriptedBackend:
    """Replies chosen by the first matching rule, one word per `token_delay`.

    Args:
        rules: Tried in order; the first whose pattern is found answers.
        default: The reply when no rule matches.
        model: Name shown in results.
        token_delay: Seconds per generated token (simulated decoding).
        prefill_delay: Seconds before the first token (simulated prefill).
        capacity: Generations run at once.
        context_length: Most prompt plus completion tokens.
        fail_with: If set, every generation raises this (for breaker tests).
    """

    def __init__(
        self,
        rules: Sequence[Rule] = (),
        *,
        default: str = DEFAULT_REPLY,
        model: str = "scripted",
        token_delay: float = 0.0,
        prefill_delay: float = 0.0,
        capacity: int = 4,
        context_length: int = 4096,
        fail_with: BaseException | None = None,
    ) -> None:
        self.rules = tuple(rules)
        self._compiled = [(re.compile(r.pattern, re.IGNORECASE), r.reply) for r in self.rules]
        self.default = default
        self.name = NAME
        self.model = model
        self.token_delay = token_delay
        self.prefill_delay = prefill_delay
        self.capacity = capacity
        self.context_length = context_length
        self.fail_with = fail_with

    def count_tokens(self, request: GenerateRequest) -> int:
        """Words of the prompt: the scripted backend's tokens."""
        return len(_WORD.findall(prompt_text(request)))

    def reply_for(self, request: GenerateRequest) -> str:
        """The scripted reply: the first rule matching the prompt's last line.

        For chat `messages`, that is the last line of the last user message
        (without its role), so one rule answers a prompt and a chat alike.

        With an output schema, a rule answers only if its reply is a valid
        instance of it (what a constrained engine could have produced); the
        default reply likewise.

        Raises:
            OutputInvalid: If no matching rule's reply, nor the default, is valid.
        """
        last_line = _last_line(request)
        replies = [reply for pattern, reply in self._compiled if pattern.search(last_line)]
        replies.append(self.default)
        if request.output is None:
            return replies[0]
        validator = _validator(request.output)
        errors: list[str] = []
        for reply in replies:
            error = _invalid(validator, reply, request.output)
            if error is None:
                return reply
            errors.append(error)
        raise OutputInvalid(
            request.output.name,
            f"no scripted rule answers with one ({len(replies)} tried; first: {errors[0]})",
            text=replies[0],
        )

    async def generate(
        self,
        request: GenerateRequest,
        emit: Emit,
        *,
        meta: Metadata,  # noqa: ARG002 - nothing to pass on in-process
    ) -> Generation:
        """Stream the scripted reply, honouring max_tokens and stop strings."""
        started = time.monotonic()
        if self.fail_with is not None:
            raise self.fail_with
        text = self.reply_for(request)
        for stop in request.stop:
            cut = text.find(stop)
            if cut >= 0:
                text = text[:cut]
        tokens = _WORD.findall(text)
        finish = FinishReason.STOP
        if len(tokens) > request.max_tokens:
            tokens, finish = tokens[: request.max_tokens], FinishReason.LENGTH
        if self.prefill_delay:
            await asyncio.sleep(self.prefill_delay)
        first_token_s = time.monotonic() - started
        for token in tokens:
            if self.token_delay:
                await asyncio.sleep(self.token_delay)
            emit(token)
        return Generation(
            text="".join(tokens),
            finish_reason=finish,
            prompt_tokens=self.count_tokens(request),
            completion_tokens=len(tokens),
            first_token_s=first_token_s,
        )

    async def aclose(self) -> None:
        """Nothing to let go: it holds no model, connection or thread."""


def _no_remote(uri: str) -> referencing.Resource[Any]:
    """Refuse every reference outside the schema (jsonschema would fetch `http` ones)."""
    raise referencing.exceptions.NoSuchResource(uri)


_LOCAL_ONLY: Final = referencing.Registry(retrieve=_no_remote)  # type: ignore[call-arg]


def _search(pattern: str, text: str) -> bool:
    """Whether `pattern` is found in `text`, given at most `_REGEX_SECONDS`.

    A caller's schema carries the patterns: Python's `re` backtracks without
    bound (`^(.|.)*X$` takes seconds on 25 characters, on the I/O loop), so
    they run in `regex`, whose matching can be given a time limit.

    Raises:
        jsonschema.ValidationError: If the pattern is not valid, or takes too long.
    """
    try:
        return regex.search(pattern, text, timeout=_REGEX_SECONDS) is not None
    except regex.error as exc:
        msg = f"pattern {pattern[:80]!r} is not valid: {exc}"
        raise jsonschema.ValidationError(msg) from exc
    except TimeoutError as exc:
        msg = f"pattern {pattern[:80]!r} took over {_REGEX_SECONDS} s"
        raise jsonschema.ValidationError(msg) from exc


def _pattern(
    validator: Any, pattern: str, instance: Any, _schema: Any
) -> Iterator[jsonschema.ValidationError]:
    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield jsonschema.ValidationError(f"{instance[:80]!r} does not match {pattern[:80]!r}")


def _pattern_properties(
    validator: Any, patterns: dict[str, Any], instance: Any, _schema: Any
) -> Iterator[jsonschema.ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


@functools.lru_cache(maxsize=_VALIDATORS)
def _validator(output: OutputSchema) -> jsonschema.protocols.Validator:
    """A validator of `output`'s schema, checked once: local references only, bounded patterns.

    Raises:
        BadRequest: If the schema is not JSON, or not a valid JSON Schema.
    """
    schema = output.document()
    base = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        base.check_schema(schema)
    except jsonschema.SchemaError as exc:
        msg = f"output schema {output.name} is not a valid JSON Schema: {exc.message[:200]}"
        raise BadRequest(msg) from exc
    except RecursionError as exc:
        msg = f"output schema {output.name} is nested too deeply"
        raise BadRequest(msg) from exc
    extend: Any = jsonschema.validators.extend  # untyped in the stubs
    cls = extend(base, {"pattern": _pattern, "patternProperties": _pattern_properties})
    validator: jsonschema.protocols.Validator = cls(schema, registry=_LOCAL_ONLY)
    return validator


def _invalid(
    validator: jsonschema.protocols.Validator, reply: str, output: OutputSchema
) -> str | None:
    """Why `reply` is not a valid instance, or None if it is.

    Raises:
        BadRequest: If the schema refers outside itself, or recurses without end.
    """
    try:
        value = json.loads(reply)
    except ValueError as exc:
        return f"not JSON ({exc})"
    try:
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    except (referencing.exceptions.Unresolvable, jsonschema.exceptions.SchemaError) as exc:
        msg = f"output schema {output.name} has a reference that does not resolve in it: {exc}"
        raise BadRequest(msg[:300]) from exc
    except RecursionError as exc:
        msg = f"output schema {output.name} refers to itself without end"
        raise BadRequest(msg) from exc
    return None if error is None else error.message[:200]


def scripted_from_settings(settings: ScriptedBackendSettings) -> ScriptedBackend:
    """A scripted backend configured by a tier's `[backend]` table."""
    rules = [*settings.rules]
    for source in settings.rules_files:
        rules.extend(read_rules_file(source))
    return ScriptedBackend(
        [Rule(pattern=r.pattern, reply=r.reply) for r in rules],
        default=settings.default_reply,
        model=settings.model,
        token_delay=settings.token_delay,
        prefill_delay=settings.prefill_delay,
        capacity=settings.capacity,
        context_length=settings.context_length,
    )
