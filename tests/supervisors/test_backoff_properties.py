from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from supervisors import Backoff

backoffs = st.builds(
    Backoff,
    base=st.floats(0, 10),
    factor=st.floats(1, 10),
    cap=st.floats(0, 60),
    jitter=st.floats(0, 1),
    reset_after=st.floats(0, 60),
)


@given(backoffs, st.integers(0, 200))
def test_a_delay_stays_within_its_jittered_exponential_bound(backoff: Backoff, n: int) -> None:
    delay = backoff.delay(n)
    if n == 0:
        assert delay == 0
        return
    ceiling = min(backoff.cap, backoff.base * backoff.factor ** (n - 1))
    assert ceiling * (1 - backoff.jitter) - 1e-9 <= delay <= ceiling + 1e-9


@given(backoffs, st.integers(1, 100))
def test_without_jitter_delays_never_shrink(backoff: Backoff, n: int) -> None:
    steady = Backoff(
        base=backoff.base,
        factor=backoff.factor,
        cap=backoff.cap,
        jitter=0,
        reset_after=backoff.reset_after,
    )
    assert steady.delay(n) <= steady.delay(n + 1)
