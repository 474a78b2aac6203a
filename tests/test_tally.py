"""The tally a relay keeps of what it wrote: what the metrics and the inspector read."""

from __future__ import annotations

from sseproxy.tally import GAP_BUCKETS, Tally


def test_counts_bytes_frames_and_when_the_first_and_last_event_left() -> None:
    tally = Tally()
    tally.wrote(7, 1.0, 0)  # a piece without a whole frame (an oversized event let through)
    assert (tally.bytes, tally.events, tally.first_event_at, tally.last_event_at) == (7, 0, None, None)
    tally.wrote(20, 2.0, 2)
    tally.wrote(9, 3.5, 1)
    assert (tally.bytes, tally.events, tally.first_event_at, tally.last_event_at) == (36, 3, 2.0, 3.5)


def test_gaps_between_writes_are_bucketed_as_a_histogram_counts_them_and_taken_once() -> None:
    tally = Tally()
    tally.wrote(1, 0.0, 1)
    assert tally.gaps is None and tally.take_gaps() is None  # one write: no gap, and no buckets held
    tally.wrote(1, GAP_BUCKETS[2], 1)          # a gap equal to a bound falls in that bound's bucket
    tally.wrote(1, GAP_BUCKETS[2] + 100.0, 1)  # over the last bound: +Inf
    taken = tally.take_gaps()
    assert taken is not None
    counts, total = taken
    expected = [0] * (len(GAP_BUCKETS) + 1)
    expected[2] = expected[-1] = 1
    assert counts == expected and abs(total - (GAP_BUCKETS[2] + 100.0)) < 1e-9
    assert tally.take_gaps() is None  # taken: counted afresh from here
    tally.wrote(1, 200.0, 1)
    counts, _ = tally.take_gaps() or ([], 0.0)
    assert sum(counts) == 1
