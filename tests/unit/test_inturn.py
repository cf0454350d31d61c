"""`InTurn`: one thread, one job at a time, owners in turn, each owner's jobs in order; a failing job fails alone."""

from __future__ import annotations

import threading

import pytest

from goex_proxy.inturn import InTurn


def test_owners_take_turns_and_each_owners_jobs_keep_their_order() -> None:
    turns = InTurn("test-turns")
    started, gate, ran = threading.Event(), threading.Event(), []
    first = turns.submit("a", lambda: (started.set(), gate.wait(10)))  # holds the thread while the rest are queued
    assert started.wait(10)
    futures = [turns.submit("a", ran.append, f"a{i}") for i in range(4)]
    futures += [turns.submit("b", ran.append, "b0"), turns.submit("c", ran.append, "c0"),
                turns.submit("b", ran.append, "b1")]
    gate.set()
    for future in [first, *futures]:
        future.result(timeout=10)
    # b and c came after a had four waiting: each waited for one of a's, not all of them
    assert ran == ["a0", "b0", "c0", "a1", "b1", "a2", "a3"]


def test_a_job_that_raises_fails_its_future_and_the_next_runs() -> None:
    turns = InTurn("test-turns")

    def broken() -> None:
        raise ValueError("broken job")

    failed = turns.submit("a", broken)
    after = turns.submit("a", lambda: "ran")
    with pytest.raises(ValueError, match="broken job"):
        failed.result(timeout=10)
    assert after.result(timeout=10) == "ran"


def test_one_job_runs_at_a_time_in_one_thread() -> None:
    turns = InTurn("test-turns")
    running, most, names = [0], [0], set()
    lock = threading.Lock()

    def job() -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            names.add(threading.current_thread().name)
        threading.Event().wait(0.005)
        with lock:
            running[0] -= 1

    for future in [turns.submit(owner, job) for owner in ("a", "b", "c") * 5]:
        future.result(timeout=10)
    assert most == [1] and names == {"test-turns"}
