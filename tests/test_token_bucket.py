"""The flood-control bucket alone: who is refused, who is disconnected."""

from __future__ import annotations

from zchat.common.flood import TokenBucket


def send_at(bucket: TokenBucket, per_second: float, seconds: float) -> tuple[int, int, bool]:
    """Messages evenly spaced from t=0: (accepted, refused, disconnected)."""
    accepted = refused = 0
    for i in range(int(per_second * seconds)):
        if bucket.take(i / per_second) == 0.0:
            accepted += 1
        else:
            refused += 1
            if bucket.abused():
                return accepted, refused, True
    return accepted, refused, False


def test_within_the_rate_nothing_is_refused() -> None:
    assert send_at(TokenBucket.new_session(20, 100, 0.0), 19, 30) == (570, 0, False)


def test_a_new_session_starts_with_a_second_s_worth_and_saves_up_to_the_burst() -> None:
    bucket = TokenBucket.new_session(20, 100, 0.0)
    assert [bucket.take(0.0) == 0.0 for _ in range(21)] == [True] * 20 + [False]
    quiet_then = [bucket.take(10.0) == 0.0 for _ in range(101)]  # ten quiet seconds later
    assert quiet_then == [True] * 100 + [False]


def test_over_the_rate_but_under_twice_it_is_refused_never_thrown_out() -> None:
    accepted, refused, disconnected = send_at(TokenBucket.new_session(20, 100, 0.0), 30, 10)
    assert 20 + 20 * 10 - 2 <= accepted <= 20 + 20 * 10 + 1 and refused > 0
    assert not disconnected


def test_a_flooder_letting_one_message_through_now_and_then_is_still_disconnected() -> None:
    # At 1,000 a second it gets a token every 50 ms: a reset on every accepted
    # message would never reach 3 x burst strikes; fading strikes do.
    accepted, refused, disconnected = send_at(TokenBucket.new_session(20, 100, 0.0), 1000, 10)
    assert disconnected and accepted > 20 and refused > 300


def test_a_retry_after_says_when_the_next_token_comes() -> None:
    bucket = TokenBucket.new_session(10, 1, 0.0)
    assert bucket.take(0.0) == 0.0
    assert abs(bucket.take(0.0) - 0.1) < 1e-9
    assert bucket.take(0.1) == 0.0
