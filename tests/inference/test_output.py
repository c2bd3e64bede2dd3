"""Schema-constrained output: a generation names the type it must produce."""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Iterator
from typing import Annotated

import msgspec
import pytest

from actors import Agent, Context, handler
from bridges import build_node
from config import decode
from inference import Rule, ScriptedBackend
from inference._openai import OpenAIBackend
from messages import (
    BadRequest,
    GenerateRequest,
    Message,
    Metadata,
    OutputInvalid,
    OutputSchema,
    decode_output,
    new_message_id,
    output_schema,
)
from supervisors import Node
from tests.conftest import WAIT


class Mood(enum.StrEnum):
    CALM = "calm"
    ANGRY = "angry"


class Verdict(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the model decides."""

    mood: Mood
    refund: bool
    note: Annotated[str, msgspec.Meta(max_length=40)] = ""


def meta() -> Metadata:
    return Metadata(id=new_message_id(), deadline=time.time() + WAIT)


def test_the_schema_of_a_struct_has_the_object_at_its_top_level() -> None:
    schema = output_schema(Verdict)
    assert schema.name == "Verdict"
    document = schema.document()
    assert document["type"] == "object"
    assert document["required"] == ["mood", "refund"]
    assert document["properties"]["mood"] == {"$ref": "#/$defs/Mood"}
    assert document["$defs"]["Mood"]["enum"] == ["angry", "calm"]
    assert output_schema(Verdict) is schema  # made once per type


def test_the_schema_of_a_container_keeps_its_shape() -> None:
    schema = output_schema(list[Verdict])
    assert schema.name == "output"  # `list[Verdict]` is no valid schema name
    assert schema.document()["type"] == "array"


def test_an_output_schema_is_bounded_on_the_wire() -> None:
    huge = {"type": "GenerateRequest", "prompt": "p", "output": {"name": "X", "json": "{" * 70_000}}
    with pytest.raises(msgspec.ValidationError, match="length <= 65536"):
        msgspec.convert(huge, GenerateRequest)
    with pytest.raises(msgspec.ValidationError, match=r"matching regex .* at `\$.output.name`"):
        msgspec.convert({**huge, "output": {"name": "no spaces", "json": "{}"}}, GenerateRequest)


def test_a_schema_that_is_not_a_json_object_is_a_bad_request() -> None:
    for text, reason in (("[1, 2]", "not a JSON object"), ("{oops", "not JSON")):
        with pytest.raises(BadRequest, match=reason):
            OutputSchema(name="X", json=text).document()


def test_decoding_cut_text_is_a_typed_retryable_error_that_keeps_the_text() -> None:
    with pytest.raises(OutputInvalid, match="not a valid Verdict") as caught:
        decode_output('{"mood": "calm", "ref', Verdict)
    assert caught.value.code == "unavailable"
    assert caught.value.text == '{"mood": "calm", "ref'
    assert decode_output('{"mood": "angry", "refund": true}', Verdict).refund


async def test_the_scripted_backend_answers_only_with_replies_that_match_the_schema() -> None:
    backend = ScriptedBackend(
        [
            Rule(pattern="refund", reply="Sure, here you go!"),  # prose: skipped
            Rule(pattern="refund", reply='{"mood": "furious", "refund": true}'),  # bad enum
            Rule(pattern="refund", reply='{"mood": "angry", "refund": true}'),
        ]
    )
    request = GenerateRequest(prompt="a refund now", output=output_schema(Verdict))
    result = await backend.generate(request, lambda _t: None, meta=meta())
    assert decode_output(result.text, Verdict) == Verdict(mood=Mood.ANGRY, refund=True)
    free = await backend.generate(
        GenerateRequest(prompt="a refund now"), lambda _t: None, meta=meta()
    )
    assert free.text == "Sure, here you go!"  # without a schema, the first rule answers


async def test_no_scripted_reply_of_the_type_is_an_output_invalid_error() -> None:
    backend = ScriptedBackend([Rule(pattern="refund", reply='{"mood": "calm"}')], default="no")
    request = GenerateRequest(prompt="refund", output=output_schema(Verdict))
    with pytest.raises(
        OutputInvalid, match=r"no scripted rule answers with one \(2 tried"
    ) as caught:
        await backend.generate(request, lambda _t: None, meta=meta())
    assert "'refund' is a required property" in str(caught.value)


async def test_a_schema_that_is_no_json_schema_is_a_bad_request_for_the_scripted_backend() -> None:
    bad = OutputSchema(name="Bad", json='{"type": 12}')
    with pytest.raises(BadRequest, match="not a valid JSON Schema"):
        await ScriptedBackend().generate(
            GenerateRequest(prompt="x", output=bad), lambda _t: None, meta=meta()
        )


def test_the_openai_backend_sends_the_schema_as_response_format() -> None:
    request = GenerateRequest(prompt="x", output=output_schema(Verdict))
    body = OpenAIBackend("http://127.0.0.1:1/v1", "m").body(request)
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "Verdict", "schema": output_schema(Verdict).document()},
    }
    legacy = OpenAIBackend("http://127.0.0.1:1/v1", "m", response_format="json_object")
    assert legacy.body(request)["response_format"] == {
        "type": "json_object",
        "schema": output_schema(Verdict).document(),
    }
    assert "response_format" not in legacy.body(GenerateRequest(prompt="x"))


class Judge(Message, frozen=True, kw_only=True):
    complaint: str
    max_tokens: int = 64


class Judged(Message, frozen=True, kw_only=True):
    verdict: Verdict


class JudgeAgent(Agent):
    @handler
    def judge(self, msg: Judge, ctx: Context) -> Judged:
        verdict = ctx.generate(msg.complaint, output=Verdict, max_tokens=msg.max_tokens)
        return Judged(verdict=verdict)


@pytest.fixture
def node() -> Iterator[Node]:
    rules = [
        {"pattern": "broken", "reply": "Ugh, broken again?"},
        {"pattern": "broken", "reply": json.dumps({"mood": "angry", "refund": True})},
    ]
    settings = decode(
        {
            "nats": {"enabled": False},
            "inference": {
                "tiers": [{"name": "large", "backend": {"kind": "scripted", "rules": rules}}]
            },
            "pools": [{"agent": "tests.inference.test_output:JudgeAgent", "size": 1}],
        }
    )
    n = build_node(settings)
    n.start()
    yield n
    n.stop()
    assert n.run(handle_signals=False) == 0


def test_an_agent_gets_the_generation_decoded_into_the_type_it_named(node: Node) -> None:
    judged = node.runtime.ref("judge").ask(Judge(complaint="it is broken"), timeout=WAIT)
    assert judged.verdict == Verdict(mood=Mood.ANGRY, refund=True)


def test_a_generation_cut_short_reaches_the_agent_as_output_invalid(node: Node) -> None:
    with pytest.raises(OutputInvalid, match="not a valid Verdict"):
        node.runtime.ref("judge").ask(Judge(complaint="broken", max_tokens=1), timeout=WAIT)


async def test_a_backtracking_pattern_in_a_callers_schema_is_cut_short_not_run_for_seconds() -> (
    None
):
    reply = json.dumps({"mood": "calm", "refund": False, "note": "a" * 30})
    backend = ScriptedBackend([Rule(pattern="x", reply=reply)])
    evil = {"type": "object", "properties": {"note": {"type": "string", "pattern": "^(.|.|.)*X$"}}}
    request = GenerateRequest(prompt="x", output=OutputSchema(name="Evil", json=json.dumps(evil)))
    started = time.monotonic()
    with pytest.raises(OutputInvalid, match=r"took over|does not match"):
        await backend.generate(request, lambda _t: None, meta=meta())
    assert time.monotonic() - started < 1.0  # Python's re: 3**30 steps, minutes


async def test_a_schema_never_makes_the_scripted_backend_fetch_a_remote_reference() -> None:
    reply = json.dumps({"mood": "calm", "refund": False})
    backend = ScriptedBackend([Rule(pattern="x", reply=reply)])
    remote = OutputSchema(name="Remote", json='{"$ref": "http://127.0.0.1:9/internal"}')
    with pytest.raises(BadRequest, match="does not resolve"):
        await backend.generate(
            GenerateRequest(prompt="x", output=remote), lambda _t: None, meta=meta()
        )


async def test_a_schema_nested_too_deeply_is_a_bad_request_not_a_worker_failure() -> None:
    deep = OutputSchema(name="Deep", json='{"items":' * 6000 + "{}" + "}" * 6000)
    with pytest.raises(BadRequest, match="nested too deeply"):
        deep.document()
    with pytest.raises(BadRequest, match="nested too deeply"):
        await ScriptedBackend().generate(
            GenerateRequest(prompt="x", output=deep), lambda _t: None, meta=meta()
        )
    looping = OutputSchema(name="Loop", json='{"$ref": "#"}')
    with pytest.raises(BadRequest, match="refers to itself"):
        await ScriptedBackend([Rule(pattern="x", reply="{}")]).generate(
            GenerateRequest(prompt="x", output=looping), lambda _t: None, meta=meta()
        )


def test_a_type_msgspec_cannot_describe_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="no JSON Schema for output type"):
        output_schema(lambda: None)


class Twice(Message, frozen=True, kw_only=True):
    pass


class TwiceAgent(Agent):
    @handler
    def twice(self, msg: Twice, ctx: Context) -> Judged:
        request = GenerateRequest(prompt="broken", output=output_schema(Verdict))
        return Judged(verdict=ctx.generate(request, output=Verdict))


def test_an_output_given_in_the_request_and_as_output_is_a_bad_request(node: Node) -> None:
    with pytest.raises(BadRequest, match="give it once"):
        TwiceAgent.spawn(node.runtime).ask(Twice(), timeout=WAIT)
