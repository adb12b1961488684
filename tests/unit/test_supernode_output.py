"""What `fedft client` makes of its SuperNode's lines (Flower 1.39's texts, as it prints them)."""

import io
import subprocess
import sys

import pytest

from fedft.deploy.cli import DEFAULT_MAX_WAIT_S
from fedft.deploy.supernode_output import SupernodeOutput, relay

RETRY = "\x1b[93mWARNING \x1b[0m:   Connection attempt failed, retrying in {:.2f} seconds"
GIVE_UP = "\x1b[93mWARNING \x1b[0m:   Giving up reconnection after 15.01 seconds and 6 tries."
BACK = "\x1b[92mINFO \x1b[0m:      Connection successful after 12.30 seconds and 4 tries."


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def feed_all(out, clock, timed_lines):
    shown = []
    for at, line in timed_lines:
        clock.now = 100.0 + at
        shown += out.feed(line)
    return shown


def test_one_line_per_retry_period_then_one_error_line():
    clock = Clock()
    out = SupernodeOutput("10.0.0.5:9092", 15.0, clock=clock)
    lines = [(t, RETRY.format(1.0)) for t in (0.0, 0.9, 2.0, 5.4, 9.3, 14.9)]
    lines += [(15.0, GIVE_UP), (15.1, "\x1b[91mERROR \x1b[0m:     Exit Code: 305")]
    lines += [(15.2, "Traceback (most recent call last):"), (15.3, RETRY.format(0.5))]
    shown = feed_all(out, clock, lines)
    assert shown == [
        "fedft: server at 10.0.0.5:9092 unreachable, retrying (0 s so far; giving up after 15 s)",
        "fedft: server at 10.0.0.5:9092 unreachable, retrying (15 s so far; giving up after 15 s)",
    ]
    assert out.gave_up_message() == (
        "server at 10.0.0.5:9092 unreachable for 15 s: gave up (--max-wait 15; start the "
        "server, check --server, or raise --max-wait)"
    )


def test_a_server_that_comes_back_is_said_once_and_the_clock_restarts():
    clock = Clock()
    out = SupernodeOutput("h:1", None, clock=clock)
    shown = feed_all(
        out,
        clock,
        [(0.0, RETRY.format(1.0)), (12.3, BACK), (50.0, RETRY.format(1.0)), (51.0, GIVE_UP)],
    )
    assert shown == [
        "fedft: server at h:1 unreachable, retrying (0 s so far; never giving up)",
        "fedft: server at h:1 reachable again after 12 s",
        "fedft: server at h:1 unreachable, retrying (0 s so far; never giving up)",
    ]
    assert out.gave_up_message().startswith("server at h:1 unreachable for 1 s: gave up (start")


def test_other_lines_pass_and_web_server_notices_are_hidden_unless_verbose():
    lines = [
        "INFO:     Started server process [6705]",
        "\x1b[92mINFO \x1b[0m:      FastAPI lifespan: startup",
        "INFO:     Uvicorn running on http://127.0.0.1:9795 (Press CTRL+C to quit)",
        "\x1b[92mINFO \x1b[0m:      Received: train message 1234",
        "\x1b[91mERROR \x1b[0m:     Failed to activate SuperNode",
    ]
    quiet = SupernodeOutput("h:1", 600.0)
    assert [s for line in lines for s in quiet.feed(line)] == lines[3:]
    loud = SupernodeOutput("h:1", 600.0, verbose=True)
    assert [s for line in lines for s in loud.feed(line)] == lines
    assert quiet.gave_up_message() is None


def test_verbose_keeps_flowers_retry_lines_beside_fedfts():
    clock = Clock()
    out = SupernodeOutput("h:1", 30.0, verbose=True, clock=clock)
    shown = feed_all(out, clock, [(0.0, RETRY.format(1.0)), (1.0, RETRY.format(2.0))])
    assert shown == [
        RETRY.format(1.0),
        "fedft: server at h:1 unreachable, retrying (0 s so far; giving up after 30 s)",
        RETRY.format(2.0),
    ]


@pytest.mark.integration
def test_relay_copies_a_real_pipe_until_it_closes():
    child = subprocess.Popen(
        [sys.executable, "-c", f"import sys; print({RETRY.format(1.0)!r}, file=sys.stderr)"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    sink = io.StringIO()
    relay(child.stdout, SupernodeOutput("h:1", 5.0), sink).join(timeout=30)
    child.wait(timeout=30)
    assert sink.getvalue() == (
        "fedft: server at h:1 unreachable, retrying (0 s so far; giving up after 5 s)\n"
    )


def test_the_client_gives_up_by_default():
    assert 0 < DEFAULT_MAX_WAIT_S < float("inf")
