"""Joining a shard's adjacent replay segments (``parallel.balanced``): every position is replayed
once, in order, from a segment start the plan allowed, down to about ``SEGMENTS_PER_JOB`` a worker."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from clearing.audit.parallel import SEGMENTS_PER_JOB, Segment, _dispatch_key, balanced


def plan(cuts_by_shard: dict[int, list[int]], head: int) -> list[Segment]:
    """What ``plan_segments`` gives for these usable cuts."""
    segments = []
    for shard, cuts in sorted(cuts_by_shard.items()):
        starts = [0, *cuts]
        for index, after in enumerate(starts):
            last = index == len(starts) - 1
            segments.append(Segment(shard, index, after, head if last else cuts[index], not last))
    return segments


@given(
    st.dictionaries(
        st.integers(0, 3), st.lists(st.integers(1, 9_999), unique=True, max_size=60).map(sorted), min_size=1
    ),
    st.integers(1, 8),
)
def test_joined_segments_cover_each_shard_once_from_planned_starts(
    cuts_by_shard: dict[int, list[int]], jobs: int
) -> None:
    finest = plan(cuts_by_shard, 10_000)
    joined = balanced(finest, jobs)
    target = jobs * SEGMENTS_PER_JOB
    if len(finest) <= target:
        assert joined == finest
    else:
        assert len(cuts_by_shard) <= len(joined) <= target + len(cuts_by_shard)  # each shard's share rounded
    for shard, cuts in cuts_by_shard.items():
        mine = [s for s in joined if s.shard == shard]
        assert [s.index for s in mine] == list(range(len(mine)))
        assert mine[0].after == 0 and mine[-1].upto == 10_000 and not mine[-1].ends_at_snapshot
        for before, after in itertools.pairwise(mine):
            assert before.upto == after.after and before.ends_at_snapshot
            assert after.after in cuts  # a start the plan allowed: a usable snapshot


def test_nineteen_segments_on_two_workers_become_eight_shorter_and_shorter() -> None:
    finest = plan({0: [50_000 * k for k in range(1, 19)]}, 946_501)
    joined = balanced(finest, 2)
    assert len(joined) == 2 * SEGMENTS_PER_JOB == 8
    # The last ones a worker takes are short: neither is left alone with a long one at the end.
    parts = [round((s.upto - s.after) / 50_000) for s in joined]
    assert parts == [4, 4, 3, 3, 2, 1, 1, 1]
    assert balanced(finest[:8], 2) == finest[:8]  # few enough: as planned


def test_each_shards_last_segment_is_dispatched_first_then_the_longest() -> None:
    # bench/replay.py's log: 19 segments joined into 8 of 200,000 down to 50,000 positions.
    joined = balanced(plan({0: [50_000 * k for k in range(1, 19)]}, 946_501), 2)
    order = sorted(joined, key=_dispatch_key)
    assert not order[0].ends_at_snapshot  # it carries the state back: the largest result
    lengths = [s.upto - s.after for s in order[1:]]
    assert lengths == sorted(lengths, reverse=True) and lengths[0] > lengths[-1]
    assert sorted(order, key=lambda s: s.index) == joined
