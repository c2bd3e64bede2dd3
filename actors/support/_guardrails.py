"""Guardrails on model output: typed decoding with one repair, and a policy filter."""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeVar

import msgspec

from actors.support._prompts import REPAIR, PromptTemplate
from messages import OutputInvalid, Unavailable

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

T = TypeVar("T")

_MAX_ERROR: Final = 300


class ModelOutputInvalid(Unavailable):
    """Raised when the model's output is invalid even after one repair attempt.

    It is `unavailable` (retryable): a sampled model may well answer properly
    next time, and the request itself was fine.
    """

    def __init__(self, task: str, error: str) -> None:
        super().__init__(f"the model's output for {task} was invalid twice: {error}")
        self.task = task


def _json_object(text: str) -> str:
    """The outermost `{...}` in `text` (models wrap JSON in prose and code fences)."""
    start, end = text.find("{"), text.rfind("}")
    return text[start : end + 1] if 0 <= start < end else text


def _salvaged(invalid: OutputInvalid, output_type: type[T]) -> T | None:
    """The JSON object inside the prose of a model that did not keep to the schema, if any."""
    inner = _json_object(invalid.text)
    if inner == invalid.text:
        return None
    try:
        return msgspec.json.decode(inner, type=output_type)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


def decode_with_repair(
    generate: Callable[[str, type[T]], T],
    prompt: str,
    output_type: type[T],
    *,
    task: PromptTemplate,
) -> T:
    """Generate `output_type` (decoding constrained to its schema); on failure, ask once to repair.

    `generate(prompt, output_type)` returns the decoded value or raises
    `OutputInvalid` (`Context.generate` with `output=` does). A constrained
    backend fails only when its text was cut short; a server that ignored
    the schema may have wrapped valid JSON in prose, which is taken as is.

    Raises:
        ModelOutputInvalid: If the repaired output is still invalid.
    """
    first = _attempt(generate, prompt, output_type)
    if not isinstance(first, OutputInvalid):
        return first
    repair = REPAIR.render(
        error=first.error[:_MAX_ERROR],
        previous=first.text[: _MAX_ERROR * 4],
        schema=json.dumps(msgspec.json.schema(output_type)),
        task=task.id,
    )
    second = _attempt(generate, repair, output_type)
    if isinstance(second, OutputInvalid):
        raise ModelOutputInvalid(task.id, second.error[:_MAX_ERROR]) from second
    return second


def _attempt(
    generate: Callable[[str, type[T]], T], prompt: str, output_type: type[T]
) -> T | OutputInvalid:
    """The decoded value; else the JSON inside a schema-ignoring model's prose; else why not."""
    try:
        return generate(prompt, output_type)
    except OutputInvalid as invalid:
        salvaged = _salvaged(invalid, output_type)
        return invalid if salvaged is None else salvaged


class Action(enum.StrEnum):
    """What a policy rule does with matching output."""

    REDACT = "redact"
    BLOCK = "block"


class PolicyRule(msgspec.Struct, frozen=True, kw_only=True):
    """One output rule: a regular expression (case-insensitive) and an action.

    Attributes:
        name: Shown in logs and in the reply's `policy` note.
        pattern: Searched in the output.
        action: `redact` replaces each match with `replacement`; `block`
            replaces the whole output with the policy's fallback.
        replacement: The text a redaction leaves.
    """

    name: str
    pattern: str
    action: Action = Action.REDACT
    replacement: str = "[redacted]"


DEFAULT_RULES: Final = (
    PolicyRule(name="email", pattern=r"[\w.+-]+@[\w-]+\.[\w.-]+"),
    PolicyRule(name="card-number", pattern=r"\b(?:\d[ -]?){13,19}\b"),
    PolicyRule(
        name="secrets", pattern=r"\b(api[_ -]?key|password)\s*(is|:|=)\s*\S+", action=Action.BLOCK
    ),
    PolicyRule(name="internal", pattern=r"\binternal only\b|\bconfidential\b", action=Action.BLOCK),
)
FALLBACK: Final = "I can't share that here. A member of our team will follow up with you."


@dataclass(frozen=True, slots=True)
class Filtered:
    """A filtered output: the text to send and the rules that fired."""

    text: str
    fired: tuple[str, ...]


class OutputPolicy:
    """Scans model output before it leaves the agent (configurable rules).

    Args:
        rules: Applied in order; the first `block` match ends the scan.
        fallback: What a blocked output becomes.
    """

    def __init__(
        self, rules: Sequence[PolicyRule] = DEFAULT_RULES, *, fallback: str = FALLBACK
    ) -> None:
        self.rules = tuple(rules)
        self._compiled = [(r, re.compile(r.pattern, re.IGNORECASE)) for r in self.rules]
        self.fallback = fallback

    def apply(self, text: str) -> Filtered:
        """Redact what redaction rules match; replace the output if a block rule matches."""
        fired: list[str] = []
        for rule, pattern in self._compiled:
            if not pattern.search(text):
                continue
            fired.append(rule.name)
            if rule.action is Action.BLOCK:
                return Filtered(self.fallback, tuple(fired))
            text = pattern.sub(rule.replacement, text)
        return Filtered(text, tuple(fired))
