"""Where the parallel replay's workers start their runs (``parallel.choose_start``): whatever the
order in which they finish, every planned segment is replayed once, by runs that start from
genesis or from a snapshot a run before them goes towards, and a worker with nothing left to do
takes about half of the largest stretch nobody has started."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from clearing.audit.parallel import Segment, choose_start


def plan(cuts_by_shard: dict[int, list[int]], head: int) -> list[Segment]:
    """What ``plan_segments`` gives for these usable cuts."""
    segments = []
    for shard, cuts in sorted(cuts_by_shard.items()):
        starts = [0, *cuts]
        for index, after in enumerate(starts):
            last = index == len(starts) - 1
            segments.append(Segment(shard, index, after, head if last else cuts[index], not last))
    return segments


def simulate(segments: list[Segment], jobs: int, turns: list[int]) -> list[list[int]]:
    """The runs (lists of planned segments) of ``jobs`` workers following ``run_worker``'s rules:
    each turn, the worker ``turns`` names (modulo those still working) finishes its segment and
    claims the next one of its shard if it is free, or else starts a new run where
    ``choose_start`` says."""
    claimed = [False] * len(segments)
    runs: list[list[int]] = []
    current: dict[int, list[int]] = {}  # worker -> its run, while it has one

    def start(worker: int) -> None:
        index = choose_start(claimed, segments)
        if index is None:
            current.pop(worker, None)
            return
        # A run begins from genesis, or inside a stretch that a run before it goes on into (the
        # free segments between are that run's), never after a stretch nobody is heading for.
        before = index - 1
        while segments[index].after and not claimed[before]:
            assert segments[before].shard == segments[index].shard and segments[before].after
            before -= 1
        claimed[index] = True
        current[worker] = [index]
        runs.append(current[worker])

    for worker in range(jobs):
        start(worker)
    turn = 0
    while current:
        worker = sorted(current)[turns[turn % len(turns)] % len(current)] if turns else min(current)
        turn += 1
        run = current[worker]
        following = run[-1] + 1
        same_shard = following < len(segments) and segments[following].shard == segments[run[-1]].shard
        if same_shard and not claimed[following]:
            claimed[following] = True
            run.append(following)
        else:
            start(worker)
    assert all(claimed)
    return runs


@given(
    st.dictionaries(
        st.integers(0, 3), st.lists(st.integers(1, 9_999), unique=True, max_size=40).map(sorted), min_size=1
    ),
    st.integers(1, 8),
    st.lists(st.integers(0, 7), max_size=50),
)
def test_runs_replay_every_segment_once_in_order_from_planned_starts(
    cuts_by_shard: dict[int, list[int]], jobs: int, turns: list[int]
) -> None:
    segments = plan(cuts_by_shard, 10_000)
    runs = simulate(segments, jobs, turns)
    assert sorted(index for run in runs for index in run) == list(range(len(segments)))
    for run in runs:
        assert run == list(range(run[0], run[-1] + 1))  # contiguous
        assert len({segments[index].shard for index in run}) == 1


def test_on_the_bench_log_the_second_worker_starts_half_way_and_a_finished_one_takes_half_the_rest() -> None:
    # bench/replay.py's log: 946,501 events, a usable snapshot every 50,000 or so.
    segments = plan({0: [50_000 * k for k in range(1, 19)]}, 946_501)
    claimed = [False] * len(segments)
    assert choose_start(claimed, segments) == 0  # from genesis: no snapshot to decode
    claimed[0] = True
    second = choose_start(claimed, segments)
    assert second == 10 and segments[second].after == 500_000
    # The second worker reached the head while the first was in its sixth segment (0-5 claimed):
    # 300,000-500,000 is free and the first worker goes on into it; the second takes its half.
    for index in (*range(0, 6), *range(10, 19)):
        claimed[index] = True
    assert segments[choose_start(claimed, segments)].after == 400_000
    claimed[8] = True
    claimed[6] = claimed[7] = True  # the first worker went on
    assert choose_start(claimed, segments) == 9  # one segment left: it is taken over whole
    claimed[9] = True
    assert choose_start(claimed, segments) is None


def test_each_shard_is_started_from_genesis_before_any_is_split() -> None:
    segments = plan({0: [100, 200, 300], 1: [100, 200]}, 400)
    claimed = [False] * len(segments)
    first = choose_start(claimed, segments)
    assert first == 0 and segments[first].shard == 0  # the longest stretch: shard 0's 400 positions
    claimed[first] = True
    second = choose_start(claimed, segments)
    assert (segments[second].shard, segments[second].after) == (1, 0)
