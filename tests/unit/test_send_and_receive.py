"""The server's wait for replies: every reply, or Interrupted soon after the stop event."""

import threading
import time
from types import SimpleNamespace

import pytest

from fedft.errors import Interrupted
from server.federation import send_and_receive


class FakeGrid:
    """Replies to message i after ``delays[i]`` seconds (never, for None)."""

    def __init__(self, delays):
        self.delays, self.t0 = delays, None

    def push_messages(self, messages):
        self.t0 = time.monotonic()
        return [str(i) for i, _ in enumerate(messages)]

    def pull_messages(self, ids):
        now = time.monotonic() - self.t0
        ready = [i for i in ids if self.delays[int(i)] is not None and self.delays[int(i)] <= now]
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i)) for i in ready]


def test_returns_every_reply_and_reports_progress():
    seen = []
    replies = send_and_receive(
        FakeGrid([0.0, 0.2]), ["a", "b"], 10.0, threading.Event(), lambda r, s: seen.append((r, s))
    )
    assert sorted(m.metadata.reply_to_message_id for m in replies) == ["0", "1"]
    assert seen[0][1] == 2 and seen[-1] == (2, 2)


def test_stop_interrupts_a_wait_that_would_last_the_whole_timeout():
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    with pytest.raises(Interrupted):
        send_and_receive(FakeGrid([0.0, None]), ["a", "b"], 3600.0, stop)
    assert time.monotonic() - started < 60  # not the hour of round_timeout_s


def test_the_timeout_still_ends_the_wait_with_the_replies_so_far():
    replies = send_and_receive(FakeGrid([0.0, None]), ["a", "b"], 0.5, threading.Event())
    assert [m.metadata.reply_to_message_id for m in replies] == ["0"]


def test_a_deployed_run_without_a_stop_event_polls_the_same_way():
    # flwr run's ServerApp passes no stop event: not Flower's own call (a pull every 3 s)
    seen = []
    replies = send_and_receive(
        FakeGrid([0.0, 0.2]), ["a", "b"], 10.0, None, lambda r, s: seen.append(r)
    )
    assert sorted(m.metadata.reply_to_message_id for m in replies) == ["0", "1"]
    assert seen[-1] == 2
