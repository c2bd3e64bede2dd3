"""ExitLink: one exit, every linked party told."""

from __future__ import annotations

from actors import ExitLink, ExitReason
from messages import ExitKind


def test_every_listener_hears_the_exit_once_in_link_order() -> None:
    link = ExitLink()
    heard: list[tuple[str, ExitReason]] = []
    link.link(lambda reason: heard.append(("supervisor", reason)))
    link.link(lambda reason: heard.append(("owner", reason)))
    crashed = ExitReason(ExitKind.CRASHED, "boom")
    assert link.exit(crashed)
    assert not link.exit(ExitReason(ExitKind.KILLED))
    assert heard == [("supervisor", crashed), ("owner", crashed)]


def test_linking_after_the_exit_hears_it_at_once() -> None:
    link = ExitLink()
    link.exit(ExitReason(ExitKind.NORMAL))
    heard: list[ExitReason] = []
    link.link(heard.append)
    assert heard == [ExitReason(ExitKind.NORMAL)]
