"""The one agent.history gap filler (edge_agent/fleet/stream.py) that `fleet events` and the monitor share:
a device's place in its seqs, the rule a page of history follows, and the requests in flight."""

from __future__ import annotations

import random
from typing import Any

import pytest

from edge_agent.contract import Rejected
from edge_agent.fleet.stream import HistoryRequests, SeqLine, lacks_history, read_page, restarted


def test_seqs_in_order_move_the_line_and_a_jump_is_held_beyond_the_gap() -> None:
    line = SeqLine()
    assert line.add(1) and line.add(2) and line.hi == 2
    assert not line.add(5) and line.hi == 2 and line.ahead == {5}
    assert not line.new(2) and not line.new(5) and line.new(3)
    assert line.add(3) and line.hi == 3
    assert line.add(4) and line.hi == 5 and line.ahead == set()  # 4 closes the gap: 5 was had


def test_skipping_counts_only_what_was_not_had() -> None:
    line = SeqLine(10, [13, 14, 20])
    assert line.skip_to(15) == 3 and line.hi == 15 and line.ahead == {20}  # 11, 12, 15: gone; 13, 14: had
    assert line.skip_to(12) == 0 and line.hi == 15  # never backwards
    copy = line.copy()
    copy.add(16)
    assert line.hi == 15 and copy.hi == 16


def test_random_arrivals_end_with_every_seq_had_once() -> None:
    """Seqs 1..n in any order, repeats included: every one is new exactly once, and the line ends at n."""
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    n = 500
    arrivals = [rng.randint(1, n) for _ in range(2 * n)] + list(range(1, n + 1))
    line, new = SeqLine(), 0
    for seq in arrivals:
        if line.new(seq):
            new += 1
            line.add(seq)
    assert new == n and line.hi == n and not line.ahead


def test_a_page_that_moves_on_with_more_asks_again() -> None:
    line = SeqLine(10)
    for seq in (14, 15):
        line.add(seq)
    assert line.page_end(10, 15, True, 17) == (True, 3)  # 11-13 pruned on the device; ask after 15
    assert line.hi == 15
    for seq in (16, 17):
        line.add(seq)
    assert line.page_end(15, 17, False, 17) == (False, 0)


def test_a_gap_left_after_the_pages_stop_moving_on_is_gone() -> None:
    """``more`` for ever without moving on: not asked again, the gap is given up (counted), the held events go on."""
    line = SeqLine(1, [5])
    assert line.page_end(1, 1, True, 5) == (False, 3) and line.hi == 5


def test_a_gap_left_after_a_page_that_moved_on_is_asked_for_again() -> None:
    """The page moved on but events held beyond it are still apart from it: ask once more before giving up."""
    line = SeqLine(2, [9])
    for seq in (3, 4, 5):
        line.add(seq)
    assert line.page_end(2, 5, False, 5) == (True, 0) and line.hi == 5
    assert line.page_end(5, 5, False, 9) == (False, 3) and line.hi == 9  # nothing new: 6-8 are gone


def test_a_device_that_counts_from_1_again_is_told_by_its_last_seq() -> None:
    assert restarted(5, 2) and not restarted(5, 5) and not restarted(5, None)
    assert not restarted(5, 7)  # events came in since: not a restart


def test_a_page_is_read_with_its_numbers_checked() -> None:
    page = read_page({"events": [{"seq": 1}], "next": 1, "more": True, "last": 3}, after=0)
    assert (page.events, page.next, page.more, page.last) == ([{"seq": 1}], 1, True, 3)
    assert read_page({"events": "x", "more": "yes"}, after=7) == ([], 7, False, None)
    assert len(read_page({"events": list(range(5000))}, 0).events) == 1000
    for bad in ({"next": -1}, {"last": True}, {"next": "5"}, {"last": 2**63}):
        with pytest.raises(Rejected):
            read_page({"events": [], **bad}, after=0)


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_one_request_in_flight_per_device_and_its_answer_found_by_id() -> None:
    sent: list[tuple[str, dict[str, Any]]] = []
    ids = iter(f"r{i}" for i in range(100))
    clock = _Clock()
    requests = HistoryRequests(lambda device, doc: sent.append((device, doc)), lambda: next(ids), timeout=30, clock=clock)
    assert requests.ask("porch", 4, since=1.5)
    assert sent == [("porch", {"id": "r0", "args": {"after": 4, "limit": 1000, "since": 1.5}})]
    assert not requests.ask("porch", 6) and requests.ask("shed", 0) and len(sent) == 2
    assert requests.answered("porch", {"id": "r0", "status": "accepted"}) is None  # not final yet
    assert requests.answered("porch", {"id": "r1", "status": "succeeded"}) is None  # another device's
    assert requests.in_flight("porch")
    assert requests.answered("porch", {"id": "r0", "status": "succeeded"}) == 4
    assert not requests.in_flight("porch") and requests.ask("porch", 6)
    clock.now += 30
    assert sorted(requests.overdue()) == ["porch", "shed"]
    assert requests.ask("porch", 6) and sent[-1][1]["id"] == "r3"  # overdue: asked again, the old answer no longer counts
    assert requests.answered("porch", {"id": "r2", "status": "succeeded"}) is None
    requests.clear()
    assert not requests.in_flight("shed")


def test_a_request_that_cannot_be_sent_is_not_in_flight() -> None:
    def send(device: str, doc: dict[str, Any]) -> None:
        raise ConnectionError("not connected")

    requests = HistoryRequests(send, lambda: "r", timeout=30)
    assert not requests.ask("porch", 0) and not requests.in_flight("porch")


def test_a_device_without_agent_history_says_so() -> None:
    assert lacks_history({"status": "rejected", "error": {"type": "unknown_action", "message": "?"}})
    assert not lacks_history({"status": "rejected", "error": {"type": "invalid_arguments"}})
    assert not lacks_history({"status": "rejected", "error": "unknown_action"})
    assert not lacks_history({"status": "failed", "error": {"type": "unknown_action"}})
