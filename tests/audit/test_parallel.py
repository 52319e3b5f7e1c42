"""The replay in segments between snapshots (clearing/audit/parallel.py) gives what the sequential
replay gives: the same findings on an honest log with margin calls and liquidations, a planted
determinism mismatch in a later segment named at its position, a snapshot that is not the re-run
state reported as before (and not trusted as a run's start), the same rebuilt projections.

The first test runs the segments in this process (``replay_run`` is a plain function) so that it
can shrink the rotating margin refresh and sample conservation often; the others go through the
worker processes as ``--jobs 2`` does."""

from __future__ import annotations

import multiprocessing
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from clearing.audit import parallel
from clearing.audit.logreplay import LogReplay, imbalance_finding
from clearing.audit.parallel import (
    NO_SAMPLES,
    ReplayTask,
    Segment,
    SegmentResult,
    is_boundary,
    merge,
    plan_segments,
    replay_run,
    start_worker_server,
    worker_context,
)
from clearing.audit.rebuild import expected_state_rows, rebuild
from clearing.audit.replay import iter_log
from clearing.audit.verify import verify
from clearing.domain.fold import conservation
from clearing.domain.numbers import ledger_context
from clearing.engine import refresh
from clearing.engine.snapshots import state_bytes
from clearing.store.db import make_engine
from tests.audit.audit_data import load_market

pytestmark = [pytest.mark.integration]

SNAPSHOT_EVERY = 150  # the CRASH market (~1,150 events) gets about seven snapshots


@pytest.fixture
def snapshotted(pg_server) -> Iterator[sa.Engine]:  # type: ignore[no-untyped-def]
    """The CRASH market written with a snapshot every ``SNAPSHOT_EVERY`` events."""
    from clearing.store.db import upgrade

    name = f"clearing_test_parallel_{uuid.uuid4().hex[:12]}"
    pg_server.create_database(name)
    try:
        url = pg_server.url(name)
        upgrade(url)
        load_market(url, snapshot_every=SNAPSHOT_EVERY).engine.dispose()
        engine = make_engine(url)
        yield engine
        engine.dispose()
    finally:
        for cached in parallel._engines.values():  # replay_run's engines, when it ran in-process
            cached.dispose()
        parallel._engines.clear()
        pg_server.drop_database(name)


def planned(engine: sa.Engine) -> list[Segment]:
    with engine.connect() as conn:
        head = int(conn.execute(sa.text("SELECT max(position) FROM events")).scalar_one())
        keys = [(int(s), int(p)) for s, p in conn.execute(sa.text("SELECT shard, position FROM snapshots"))]
        return plan_segments(conn, keys, head)


def cuts(engine: sa.Engine) -> list[int]:
    return [s.after for s in planned(engine) if s.after]


def merged_runs(engine: sa.Engine, starts: list[int]) -> tuple[LogReplay | None, str | None]:
    """The verify replay in runs (in this process) from genesis and from each cut in ``starts``."""
    segments = planned(engine)
    task = ReplayTask(engine.url.render_as_string(hide_password=False), tuple(segments), True, True, NO_SAMPLES, True)
    indexes = [0] + [next(i for i, s in enumerate(segments) if s.after == start) for start in starts]
    results = [replay_run(task, index, lambda following: following not in indexes) for index in indexes]
    return merge(results, decide=True, check_fills=True, conservation_every=NO_SAMPLES)


def tamper(engine: sa.Engine, *statements: str) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE events DISABLE TRIGGER ALL"))
        for statement in statements:
            conn.execute(sa.text(statement))
        conn.execute(sa.text("ALTER TABLE events ENABLE TRIGGER ALL"))


def checks_of(report: Any) -> dict[str, Any]:
    return {check["name"]: check for check in report.as_dict()["checks"]}


def test_segments_merged_equal_the_sequential_replay_field_by_field(
    snapshotted: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 30 accounts: with a window of 7 the refresh rotates, and its cursor (history, not in the
    # snapshots) must be carried from segment to segment by the merge.
    monkeypatch.setattr(refresh, "MARGIN_REFRESH_ACCOUNTS_MAX", 7)  # the ledger's and the replay's
    every = 40
    for decide in (True, False):
        with snapshotted.connect() as conn:
            head = int(conn.execute(sa.text("SELECT max(position) FROM events")).scalar_one())
            keys = [(int(s), int(p)) for s, p in conn.execute(sa.text("SELECT shard, position FROM snapshots"))]
            segments = plan_segments(conn, keys, head)
        assert len(segments) >= 5
        url = snapshotted.url.render_as_string(hide_password=False)
        task = ReplayTask(url, tuple(segments), decide, decide, every, decide)
        results = [replay_run(task, index, lambda _next: False) for index in range(len(segments))]
        check_merged(snapshotted, results, decide, head, every, runs_of_one=True)
        # Runs of several segments, the state carried on from one to the next (as a worker goes on
        # while the next segment is free), merge to the same.
        starts = [0, 2, len(segments) - 2]
        results = [replay_run(task, start, lambda following, taken=starts: following not in taken) for start in starts]
        assert [r.segment.upto for r in results] == [segments[1].upto, segments[-3].upto, head]
        check_merged(snapshotted, results, decide, head, every, runs_of_one=False)


def check_merged(
    snapshotted: sa.Engine, results: list[SegmentResult], decide: bool, head: int, every: int, *, runs_of_one: bool
) -> None:
    """The merged replay equals the sequential one, field by field."""
    assert all(r.end_ok for r in results)
    # The run that reaches the head sends its state back as a snapshot: the same bytes as the
    # sequential replay's state there (compared below, after the merge decoded it).
    assert [r.state is not None for r in results] == [False] * (len(results) - 1) + [True]
    assert any(r.refresh_deferred for r in results[1:]), "no segment exercised the deferred refresh"
    merged, reason = merge(results, decide=decide, check_fills=decide, conservation_every=every)
    assert merged is not None, reason
    merged.finish()
    samples = set(merged.conservation_checks)
    found = {f.position: f.problem for f in merged.conservation_bad}

    sequential = LogReplay(decide=decide, conservation_every=every, check_fills=decide)
    balanced: set[int] = set()
    recomputed: dict[int, str] = {}
    with snapshotted.connect() as conn, ledger_context():
        for row in iter_log(conn):
            sequential.feed(row)
            if row[0] in samples:
                imbalance = conservation(sequential.shard(row[1]).state)
                if imbalance:
                    recomputed[row[0]] = imbalance_finding(row[0], imbalance).problem
            if not sequential.unmatched and not sequential.shard(row[1]).pending:
                balanced.add(row[0])
    sequential.finish()

    assert (merged.events, merged.head) == (sequential.events, sequential.head)
    assert merged.decisions_compared == sequential.decisions_compared
    if decide:
        assert merged.decisions_compared > 10
    assert merged.determinism_mismatches == sequential.determinism_mismatches == 0
    # A trade whose two fills lie in two segments is settled by the merge's pairing, not by the
    # workers: the rest are the sequential replay's, settled or not.
    if decide:
        assert merged.trades_settled and merged.trades == sequential.trades
    assert merged.trades_settled.items() <= sequential.trades_settled.items()
    split = {trade_id: fills for trade_id, fills in merged.fills.items() if trade_id in sequential.trades_settled}
    assert all(len(fills) == 2 for fills in split.values())
    unsettled = {trade_id: fills for trade_id, fills in merged.fills.items() if trade_id not in split}
    assert unsettled == sequential.fills and list(unsettled) == list(sequential.fills)
    assert merged.unmatched == sequential.unmatched
    assert merged.liquidation_fills == sequential.liquidation_fills
    assert merged.margin_events == sequential.margin_events
    assert any(e[1] == "LiquidationOrderIssued" for e in merged.margin_events)
    assert merged.counterpart_findings() == sequential.counterpart_findings()
    for shard, track in sequential.shards.items():
        got = merged.shards[shard]
        assert state_bytes(got.state) == state_bytes(track.state)
        assert got.last_change == track.last_change
        assert got.written_at == track.written_at
        assert got.mark_change == track.mark_change
        assert got.mark_written == track.mark_written
        assert (got.head, got.refresh_cursor, list(got.pending)) == (
            track.head,
            track.refresh_cursor,
            list(track.pending),
        )
    assert expected_state_rows(merged).rows == expected_state_rows(sequential).rows
    # Conservation: the samples lie elsewhere than the sequential ones (each worker's schedule
    # starts at its segment), but every sample the merge kept is a point where the sequential
    # replay could have sampled, there are about as many, and each says what the sequential
    # state at that position says.
    assert merged.conservation_checks[-1] == head
    assert samples <= balanced | {head}
    if runs_of_one:
        assert len(samples) >= len(sequential.conservation_checks) // 2 >= 5
    else:
        # A run from a snapshot samples only where the fills it saw are matched among themselves,
        # and a trade booked half before its start leaves one unmatched for the rest of the run
        # (what was unmatched before the run is known to the merge, not to the worker). A run from
        # genesis knows all: it samples where the sequential replay does.
        first_end = results[0].segment.upto
        assert {p for p in samples if p <= first_end} == {p for p in sequential.conservation_checks if p <= first_end}
        assert len(samples) >= 5
    if decide:
        assert found == recomputed
        # An honest log balances at every sample. Sampling where as many trades were half
        # booked as liquidation fills had been seen (a count, not a pairing) once reported
        # "books do not balance" here, at position 480, with samples every 40 events.
        assert found == {} and sequential.conservation_bad == []


def test_parallel_verify_of_a_market_with_liquidations_equals_the_sequential_one(snapshotted: sa.Engine) -> None:
    sequential = verify(snapshotted)
    parallel_report = verify(snapshotted, jobs=2)
    assert sequential.ok and parallel_report.ok
    assert parallel_report.replay["mode"] == "parallel" and parallel_report.replay["segments"] >= 5
    assert 1 <= parallel_report.replay["runs"] <= parallel_report.replay["segments"]  # one when a worker is quick
    assert sequential.replay["mode"] == "sequential"
    assert checks_of(parallel_report) == checks_of(sequential)
    assert parallel_report.events == sequential.events
    found = checks_of(parallel_report)
    assert found["projections"]["details"]["liquidations"]["rows_live"] > 0
    assert found["snapshots"]["details"]["compared"] == found["snapshots"]["details"]["snapshots"] >= 5


def test_the_hash_chain_check_beside_the_replay_reports_its_start_and_its_end(snapshotted: sa.Engine) -> None:
    # Its process reports nothing in between: a rate taken from the report before its last (any
    # phase's) was millions of events a second.
    reports: list[tuple[str, int]] = []
    result = verify(snapshotted, lambda phase, count: reports.append((phase, count)), jobs=2)
    chain = [(i, count) for i, (phase, count) in enumerate(reports) if phase == "hash chain"]
    others = [i for i, (phase, _count) in enumerate(reports) if phase != "hash chain"]
    assert result.ok and result.replay["mode"] == "parallel"
    assert chain[0][1] == 0 and chain[0][0] < others[0]
    assert chain[-1][1] == result.events


def test_a_determinism_mismatch_in_a_later_segment_is_found_at_its_position(snapshotted: sa.Engine) -> None:
    later = cuts(snapshotted)[2]
    with snapshotted.connect() as conn:
        target = int(
            conn.execute(
                sa.text(
                    "SELECT min(position) FROM events WHERE position > :p "
                    "AND type IN ('MarginCallIssued', 'LiquidationOrderIssued')"
                ),
                {"p": later},
            ).scalar_one()
        )
    tamper(snapshotted, f'UPDATE events SET payload = payload || \'{{"planted": "1"}}\' WHERE position = {target}')
    sequential = verify(snapshotted)
    parallel_report = verify(snapshotted, jobs=2)
    assert parallel_report.replay["mode"] == "parallel"  # the states are right: no fallback
    found = checks_of(parallel_report)
    assert not found["replay_determinism"]["ok"]
    assert found["replay_determinism"]["first_bad_position"] == target
    assert found["replay_determinism"]["details"]["mismatches"] == 1
    # The chain check, which runs in a process of its own beside the replay's, names the row too.
    assert not found["hash_chain"]["ok"] and found["hash_chain"]["first_bad_position"] == target
    assert found == checks_of(sequential)


def test_a_snapshot_unlike_the_re_run_state_is_reported_and_no_run_starts_from_it(
    snapshotted: sa.Engine,
) -> None:
    bad, other = cuts(snapshotted)[1], cuts(snapshotted)[3]
    with snapshotted.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE snapshots SET state = (SELECT state FROM snapshots WHERE position = :o) WHERE position = :p"
            ),
            {"o": other, "p": bad},
        )
    sequential = verify(snapshotted)
    parallel_report = verify(snapshotted, jobs=2)
    found = checks_of(parallel_report)
    assert not found["snapshots"]["ok"]
    assert found["snapshots"]["first_bad_position"] == bad
    assert found["replay_determinism"]["ok"] and found["projections"]["ok"]
    assert found == checks_of(sequential)
    if parallel_report.replay["mode"] == "sequential":  # a worker's run started from it
        assert str(bad) in parallel_report.replay["fallback"]
    # A run that starts from it is not trusted (the run before it ends at a state unlike it),
    # and the merge says so: the caller then replays sequentially. Runs that pass it are.
    merged, reason = merged_runs(snapshotted, [bad])
    assert merged is None and reason is not None and str(bad) in reason
    merged, reason = merged_runs(snapshotted, [cuts(snapshotted)[2]])
    assert merged is not None, reason


def test_a_trade_settled_in_one_run_with_a_fill_in_another_is_named_as_the_sequential_replay_does(
    snapshotted: sa.Engine,
) -> None:
    # A worker settles the trades whose two fills it saw. A third fill of one of them, further on
    # in the log, is a finding only the sequential replay can word, unless the same run sees it:
    # the merge of two runs gives way.
    first, later = cuts(snapshotted)[0], cuts(snapshotted)[2]
    with snapshotted.connect() as conn:
        settled_trade = conn.execute(
            sa.text(
                "SELECT payload->>'trade_id' FROM events WHERE type = 'FillRecorded' AND position <= :p "
                "GROUP BY 1 HAVING count(*) = 2 ORDER BY min(position) LIMIT 1"
            ),
            {"p": first},
        ).scalar_one()
        target = conn.execute(
            sa.text("SELECT min(position) FROM events WHERE type = 'FillRecorded' AND position > :p"), {"p": later}
        ).scalar_one()
    tamper(
        snapshotted,
        f"UPDATE events SET payload = jsonb_set(payload, '{{trade_id}}', '\"{settled_trade}\"') "
        f"WHERE position = {target}",
    )
    sequential = verify(snapshotted)
    parallel_report = verify(snapshotted, jobs=2)
    if parallel_report.replay["mode"] == "sequential":
        assert "more fills" in parallel_report.replay["fallback"]
    found = checks_of(parallel_report)
    assert not found["counterparts"]["ok"]
    assert f"trade {settled_trade} has 3 fills" in found["counterparts"]["problem"]
    assert found == checks_of(sequential)
    merged, reason = merged_runs(snapshotted, [later])
    assert merged is None and reason is not None and "more fills" in reason
    merged, reason = merged_runs(snapshotted, [cuts(snapshotted)[-1]])  # one run sees all three
    assert merged is not None, reason
    assert any(f"trade {settled_trade} has 3 fills" in f.problem for f in merged.counterpart_findings())


def test_a_snapshot_inside_a_batch_is_not_a_cut(snapshotted: sa.Engine) -> None:
    with snapshotted.connect() as conn:
        inside = int(
            conn.execute(
                sa.text(
                    "SELECT min(a.position) FROM events a JOIN events b ON b.position = a.position + 1 "
                    "WHERE a.recorded_at = b.recorded_at AND a.shard = b.shard"
                )
            ).scalar_one()
        )
        assert not is_boundary(conn, 0, inside)
        assert all(is_boundary(conn, 0, p) for p in cuts(snapshotted))
        head = int(conn.execute(sa.text("SELECT max(position) FROM events")).scalar_one())
        assert not is_boundary(conn, 0, head)  # nothing after it to replay
        segments = plan_segments(conn, [(0, inside)], head)
    assert [(s.after, s.upto) for s in segments] == [(0, head)]


def test_parallel_rebuild_equals_the_sequential_one(snapshotted: sa.Engine) -> None:
    with snapshotted.begin() as conn:  # some damage for both to repair and report alike
        conn.execute(sa.text("UPDATE balances SET amount = amount + 1 WHERE account_id = 'ACC-00003'"))
    sequential = rebuild(snapshotted, swap=False).as_dict()
    parallel_report = rebuild(snapshotted, swap=False, jobs=2).as_dict()
    assert parallel_report["replay"]["mode"] == "parallel" and parallel_report["replay"]["segments"] >= 5
    assert not parallel_report["consistent_with_previous"]
    for key in ("seconds_replay", "seconds_swap", "replay"):
        sequential.pop(key)
        parallel_report.pop(key)
    assert parallel_report == sequential


@pytest.mark.skipif("forkserver" not in multiprocessing.get_all_start_methods(), reason="no forkserver here")
def test_workers_fork_from_a_server_that_imported_clearing_not_from_the_caller() -> None:
    # Forked from the caller, a worker would share its engines' connections; spawned, it would
    # import clearing itself (0.76 s for a pool of two, against 0.03 s forked from the server).
    # The questions go as builtins and text: a function of this module would import clearing
    # in the worker to unpickle it.
    start_worker_server()
    with worker_context().Pool(2) as pool:
        parent = pool.apply(os.getppid)
        imported = pool.apply(eval, ("'clearing.audit.logreplay' in __import__('sys').modules",))
    assert parent != os.getpid()
    assert imported is True
