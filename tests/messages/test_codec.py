from __future__ import annotations

import pickle
import time

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from messages import (
    AgentError,
    AgentStopped,
    BadRequest,
    ChildExited,
    ControlMessage,
    ErrorCode,
    ErrorReply,
    ExitKind,
    InternalError,
    Message,
    Metadata,
    Overloaded,
    Ping,
    Priority,
    RequestTimeout,
    SupervisionEvent,
    Unavailable,
    decode,
    encode,
    new_message_id,
)


class OrderV1(Message, frozen=True, kw_only=True):
    order_id: str


class OrderV2(Message, frozen=True, kw_only=True, tag="OrderV1"):
    order_id: str
    rush: bool = False


def test_a_control_message_round_trips_through_its_union() -> None:
    assert decode(encode(Ping(payload="hi")), ControlMessage) == Ping(payload="hi")


def test_a_supervision_event_round_trips_with_its_tag() -> None:
    event = ChildExited(supervisor="s", child_id="c", reason=ExitKind.KILLED, detail="x")
    data = encode(event)
    assert msgspec.msgpack.decode(data)["type"] == "ChildExited"
    assert decode(data, SupervisionEvent) == event


def test_metadata_round_trips_with_all_fields() -> None:
    meta = Metadata(
        id=new_message_id(),
        deadline=time.time() + 1,
        correlation_id="c1",
        priority=Priority.SHEDDABLE,
        sender="support/1",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    assert decode(encode(meta), Metadata) == meta


def test_garbage_bytes_raise_a_typed_bad_request() -> None:
    with pytest.raises(BadRequest, match="cannot decode"):
        decode(b"\xc1\xff", ControlMessage)


def test_a_valid_message_of_the_wrong_type_raises_bad_request() -> None:
    with pytest.raises(BadRequest):
        decode(encode(OrderV1(order_id="1")), ControlMessage)


def test_an_older_reader_accepts_a_newer_writers_extra_field() -> None:
    newer = encode(OrderV2(order_id="7", rush=True))
    assert decode(newer, OrderV1) == OrderV1(order_id="7")


def test_a_newer_reader_fills_defaults_for_an_older_writer() -> None:
    assert decode(encode(OrderV1(order_id="7")), OrderV2) == OrderV2(order_id="7", rush=False)


def test_message_ids_are_unique() -> None:
    ids = {new_message_id() for _ in range(10_000)}
    assert len(ids) == 10_000


@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_error_code_maps_to_an_exception_and_back(code: ErrorCode) -> None:
    reply = ErrorReply(code=code, message="m", retry_after=2.0)
    error = decode(encode(reply), ErrorReply).to_error()
    assert isinstance(error, AgentError)
    assert error.code is code
    assert error.retry_after == 2.0
    assert ErrorReply.from_error(error) == reply


def test_a_timeout_is_also_a_builtin_timeout_error() -> None:
    assert issubclass(RequestTimeout, TimeoutError)


def test_agent_stopped_travels_as_unavailable() -> None:
    error = ErrorReply.from_error(AgentStopped("w/1", "killed")).to_error()
    assert type(error) is Unavailable
    assert "w/1" in error.message


def test_an_unknown_code_from_a_newer_peer_is_rejected_as_bad_request() -> None:
    data = msgspec.msgpack.encode({"type": "ErrorReply", "code": "teapot", "message": "x"})
    with pytest.raises(BadRequest):
        decode(data, ErrorReply)


@pytest.mark.parametrize(
    "error",
    [Overloaded("busy", retry_after=1.0), AgentStopped("a/1", "killed"), InternalError("x")],
)
def test_errors_survive_pickling_between_processes(error: AgentError) -> None:
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    assert type(copy) is type(error)
    assert copy.message == error.message
    assert copy.retry_after == error.retry_after


@given(
    st.builds(
        Metadata,
        id=st.text(min_size=1, max_size=40),
        deadline=st.floats(0, 4e9),
        correlation_id=st.none() | st.text(max_size=40),
        priority=st.sampled_from(list(Priority)),
        sender=st.none() | st.text(max_size=40),
        traceparent=st.none() | st.text(max_size=55),
        tracestate=st.none() | st.text(max_size=60),
    )
)
def test_any_metadata_round_trips(meta: Metadata) -> None:
    assert decode(encode(meta), Metadata) == meta


@given(st.binary(max_size=256))
def test_arbitrary_bytes_decode_to_a_control_message_or_raise_bad_request(data: bytes) -> None:
    try:
        message = decode(data, ControlMessage)
    except BadRequest:
        return
    assert isinstance(message, Message)
