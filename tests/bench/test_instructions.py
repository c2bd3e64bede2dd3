"""bench/instructions.py's stages do the work they are counted for, without valgrind."""

from __future__ import annotations

from bench.instructions import FakeMsg, Floor, ServingPath


def test_each_request_of_the_whole_path_is_answered_once() -> None:
    path = ServingPath()
    try:
        for _ in range(5):
            path.whole()
        assert path.published == 5
        assert not path.lane
        assert not path.jobs
    finally:
        path.close()


def test_the_request_stage_hands_each_request_to_the_agent() -> None:
    path = ServingPath()
    try:
        path.endpoint.on_request(FakeMsg(path.body))  # type: ignore[arg-type]
        (call,) = path.lane
        assert call.payload == path.decoder.decode(path.body)[-1]
        assert call.reply is not None
        assert not call.reply.done()
    finally:
        path.close()


def test_the_floor_answers_each_request_with_the_echo() -> None:
    floor = Floor()
    for _ in range(3):
        floor.whole()
    assert floor.published == 3
    assert not floor.replies
    assert floor.inbox.empty()
