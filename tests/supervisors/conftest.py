from __future__ import annotations

import pytest

from actors import Runtime
from tests.supervisors.helpers import ManualTimers


@pytest.fixture
def manual_timers(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> ManualTimers:
    """Replace the runtime's timer thread, so that backoff delays end when the test says."""
    timers = ManualTimers()
    monkeypatch.setattr(runtime, "timers", timers)
    return timers
