"""The replay of ``audit verify`` and ``projections rebuild`` in runs, folded by worker processes
in parallel, each run starting from genesis or from a stored snapshot.

Segments. A shard's log is cut at the positions of its stored snapshots: segment k replays the
shard's positions (s_k, s_{k+1}], from genesis for k = 0 and from the decoded snapshot at s_k
otherwise. Only a snapshot at the end of a batch is a cut (``plan_segments``): the next event of
the shard was recorded by another transaction (another ``recorded_at``: the replay's batch
tracking must not be split) and is not a decision caused at or before the cut. Shards are
independent (one state per shard), so every shard's segments are cut the same way and all of
them go to one pool of ``jobs`` processes (``worker_context``: forked from a server process that
has imported clearing and nothing else, never from the caller, because SQLAlchemy engines and
psycopg connections must not cross a fork; every worker makes its own engine from the URL and
streams its own rows).

Runs. A worker replays a run of segments: it claims a segment (a flag per segment, shared by the
workers under a lock), replays it, and goes on into the next one of the shard with the state it
has while that one is free, so that only a run's first segment pays for decoding its snapshot
and rebuilding the trigger index (together a fifth of the time the events between two of the
ledger's snapshots take). A worker whose run ends (at the
shard's head, or at a segment another worker claimed) starts the next where ``choose_start``
says: a shard's first segment, else half way along the longest stretch of free segments, which
the run before that stretch is heading into. So the workers start at genesis and half way, and
one that finishes early takes over half of what the other has left: they end about together,
in two or three runs where fixed segments took more wall time (docs/performance.md).

Soundness. Every worker re-runs its run exactly as ``LogReplay`` does sequentially and, at its
last position, compares its state with the stored snapshot there (``snapshot_matches``, with no
decision of the re-run still expected: the same condition under which the sequential verify
compares a snapshot). A snapshot written before the pairing record existed (open and busted fills)
is compared without it, and a run from it starts with none: the record decides no event and books
nothing (it checks a second fill's terms on admission, and the log holds only admitted fills), and
a run carrying a wrong one to a snapshot that holds the record is found there. The first run
starts from genesis; if the end state of a run equals the snapshot where the next one starts, the
next started from the state the sequential replay has there. By induction every run is the
sequential replay of its positions, so its findings are the sequential findings. If one end state
does not match (or a worker fails), the parallel result is thrown away and the caller replays the
whole log sequentially, which reports the snapshot and everything else as it always did
(``ParallelOutcome.replay`` is None, with the reason). A wrong snapshot that no run starts from is
only a finding: the verify compares every snapshot a run passes, as the sequential one does.

The trigger index is derived state: a decoded snapshot has a stale index, rebuilt on the next
step, and the decisions do not depend on it (a property of the domain, which the tests check by
comparing the parallel findings with the sequential ones on a log with calls and liquidations).

Merging (``merge``) the runs, in log order, field by field of ``LogReplay`` and ``ShardTrack``:

* events, decisions compared, determinism mismatches: sums; determinism findings: in log order,
  the first ten;
* per shard: the final state, pending decisions and head of the last run; ``last_change``,
  ``written_at``, ``mark_change``, ``mark_written``, ``rates_change``: the later run wins
  (positions grow);
* the rotating margin refresh: its cursor is history the snapshot does not hold, so a run
  from a snapshot keeps the windows that depend on it (more than ``MARGIN_REFRESH_ACCOUNTS_MAX``
  holders) as (batch end, holders) and the parent re-enacts them with the cursor the previous
  run ended with: ``written_at`` is then what the sequential replay computes;
* fills by trade id (a trade's two fills may lie in two runs): the trades a worker settled
  (both fills seen, counterparts: ``LogReplay._fill``) come as the positions of their fills; the
  other fills are concatenated in log order and paired by ``counterpart_findings`` in the
  parent. A settled trade id found again, in another run's fills or settled trades, is a
  trade with more than two fills, which only the sequential replay can word: the parallel result
  is then thrown away. Liquidation fills are concatenated;
* margin events (for ``write_decisions``): in the order the sequential replay appends them;
* conservation: a worker samples every ``conservation_every`` events of its run where no
  fill is unmatched *as far as the run knows* (``LogReplay.unmatched``); the parent adds the
  unmatched counts the previous runs left and keeps a sample only when the whole log's
  condition (nothing unmatched, ``LogReplay.feed``) holds there; the check at the head is the
  parent's, over the final states. With several shards the books balance only summed over the
  shards at one position, which no worker sees, so the samples are taken at the head only (the
  report says so). The sample positions differ from the sequential ones (a worker's schedule
  starts at its run); every sample is a point where the sequential replay could have sampled.
  A trade booked half before a run's start leaves a fill unmatched for the rest of that run (the
  worker does not know what was unmatched before it), so a run from a snapshot can sample less.
"""

from __future__ import annotations

import heapq
import itertools
import multiprocessing
import queue
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from multiprocessing import forkserver
from multiprocessing.context import BaseContext
from typing import Any

import sqlalchemy as sa

from clearing.audit.logreplay import Finding, LogReplay, ShardTrack, imbalance_finding
from clearing.audit.replay import iter_log
from clearing.domain.numbers import ledger_context
from clearing.domain.state import LedgerState
from clearing.engine.refresh import refresh_window
from clearing.engine.snapshots import snapshot_matches, state_bytes, state_from_bytes
from clearing.runtime import tune_gc
from clearing.store.db import make_engine

PROGRESS_EVERY_EVENTS = 10_000  # a worker reports its count every this many events
PROGRESS_POLL_S = 0.5  # the parent updates its progress this often while the workers run
RESULT_WAIT_S = 600.0  # longest wait for a run's result the worker has sent, once workers are done
PARALLEL_BOUNDARIES_MIN = 2  # fewer usable snapshots than this: the sequential replay
FINDINGS_MAX = 10  # as LogReplay keeps
NO_SAMPLES = 1 << 62

Progress = Callable[[int], None]
FillEntry = tuple[int, str, str, str, str, str]
Sample = tuple[int, dict[str, Decimal], dict[tuple[str, str, str], int]]
MarginEvent = tuple[int, str, dict[str, Any], datetime]


@dataclass(frozen=True)
class Segment:
    shard: int
    index: int  # order within the shard
    after: int  # 0: genesis; else the position of the snapshot the segment starts from
    upto: int  # last position replayed
    ends_at_snapshot: bool  # upto is a cut: the end state must equal the snapshot there


def choose_start(claimed: Sequence[bool], segments: Sequence[Segment]) -> int | None:
    """Where a worker with nothing to do starts its next run (see the module docstring): in the
    stretch of free segments (in a row, of one shard) that spans the most log positions; at its
    first segment when no run goes into it (a shard's first segment: from genesis), otherwise at
    the segment that cuts it nearest its middle, so that the run before it, which goes on into
    the stretch, and the new run have about as much left. None when every segment is claimed."""
    best: tuple[int, int, int] | None = None  # (positions spanned, first, last)
    index, count = 0, len(segments)
    while index < count:
        if claimed[index]:
            index += 1
            continue
        last = index
        while last + 1 < count and not claimed[last + 1] and segments[last + 1].shard == segments[index].shard:
            last += 1
        span = segments[last].upto - segments[index].after
        if best is None or span > best[0]:
            best = (span, index, last)
        index = last + 1
    if best is None:
        return None
    _span, first, last = best
    if first == 0 or segments[first - 1].shard != segments[first].shard:
        return first
    begin, end = segments[first].after, segments[last].upto
    return min(range(first, last + 1), key=lambda k: abs((segments[k].after - begin) - (end - segments[k].after)))


def shards_of(conn: sa.Connection) -> list[int]:
    return [int(s) for (s,) in conn.execute(sa.text("SELECT DISTINCT shard FROM events ORDER BY 1"))]


def is_boundary(conn: sa.Connection, shard: int, position: int) -> bool:
    """A snapshot at ``position`` can start a segment: it is an event of the shard, the shard's
    next event belongs to another transaction and is not a decision caused at or before it."""
    rows = conn.execute(
        sa.text(
            "SELECT position, recorded_at, cause_position FROM events WHERE shard = :shard AND position >= :p "
            "ORDER BY position LIMIT 2"
        ),
        {"shard": shard, "p": position},
    ).all()
    if len(rows) < 2 or int(rows[0][0]) != position:
        return False  # not an event of the shard, or nothing after it to replay
    nxt = rows[1]
    return bool(nxt[1] != rows[0][1] and (nxt[2] is None or int(nxt[2]) > position))


def plan_segments(conn: sa.Connection, snapshot_keys: Iterable[tuple[int, int]], head: int) -> list[Segment]:
    """The segments of every shard up to ``head``, cut at the usable snapshots."""
    by_shard: dict[int, list[int]] = {}
    for shard, position in snapshot_keys:
        if position < head:
            by_shard.setdefault(shard, []).append(position)
    segments: list[Segment] = []
    for shard in shards_of(conn):
        cuts = [p for p in sorted(by_shard.get(shard, [])) if is_boundary(conn, shard, p)]
        starts = [0, *cuts]
        for index, after in enumerate(starts):
            last = index == len(starts) - 1
            segments.append(Segment(shard, index, after, head if last else cuts[index], not last))
    return segments


# ---------------------------------------------------------------------------------------------
# the worker


@dataclass(frozen=True)
class ReplayTask:
    url: str
    segments: tuple[Segment, ...]  # the plan (``plan_segments``), which runs are made of
    decide: bool
    check_fills: bool
    conservation_every: int
    all_snapshots: bool  # compare every stored snapshot a run passes (verify), else the one it ends at


@dataclass
class SegmentResult:
    """What the parent merges of one run: ``segment`` spans the planned segments it replayed."""

    segment: Segment
    events: int = 0
    first: tuple[int, str] | None = None  # position and recorded_at (its text) of the first row
    last: tuple[int, str] | None = None
    determinism: list[Finding] = field(default_factory=list)
    determinism_mismatches: int = 0
    decisions_compared: int = 0
    samples: list[Sample] = field(default_factory=list)
    fills: dict[str, list[FillEntry]] = field(default_factory=dict)  # trades not settled
    trades_settled: dict[str, tuple[int, int]] = field(default_factory=dict)
    unmatched: dict[tuple[str, str, str], int] = field(default_factory=dict)  # LogReplay.unmatched
    liquidation_fills: list[FillEntry] = field(default_factory=list)
    busts: list[tuple[int, str, str, str, str, str, str]] = field(default_factory=list)  # LogReplay.busts
    margin_events: list[MarginEvent] = field(default_factory=list)
    margin_fed: list[int] = field(default_factory=list)  # position of the row that appended each
    last_change: dict[str, int] = field(default_factory=dict)
    written_at: dict[str, int] = field(default_factory=dict)
    mark_change: dict[str, int] = field(default_factory=dict)
    mark_written: dict[str, int] = field(default_factory=dict)
    rates_change: dict[str, int] = field(default_factory=dict)
    refresh_cursor: int | None = 0
    refresh_deferred: list[tuple[int, list[str]]] = field(default_factory=list)
    pending: list[tuple[int, str]] = field(default_factory=list)
    state: bytes | None = None  # the run that reaches the shard's head only: its state as a snapshot
    snapshots: list[tuple[int, bool]] = field(default_factory=list)  # (position, equal) compared
    end_ok: bool = True
    seconds: float = 0.0


_to_parent: Any = None  # progress counts and run results, to the parent (a multiprocessing Queue)
_claims: Any = None  # the workers' shared claims, one flag per planned segment (a multiprocessing Array)
_engines: dict[str, sa.Engine] = {}


def worker_context() -> BaseContext:
    """How worker processes start: forked from the forkserver, which imports
    ``clearing.audit.parallel`` once when it starts (``start_worker_server``); spawned where the
    platform has no forkserver. A spawned worker imports clearing and SQLAlchemy itself, and
    replays nothing in the meantime: a pool forked from a running server is ready at once. The
    server is one process
    per caller, started on first use; it inherits the caller's environment as it is then."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def start_worker_server() -> None:
    """Start the server the workers fork from (``worker_context``), if it is not running, and return
    at once: it imports clearing in the background while the caller goes on. ``audit verify`` calls
    it before its first read, so that its replay's workers start in milliseconds; without it, the
    first pool starts the server and waits for its imports."""
    if worker_context().get_start_method() == "forkserver":
        forkserver.ensure_running()


def _init_worker(to_parent: Any, claims: Any) -> None:
    global _to_parent, _claims
    tune_gc()  # a worker runs no command's main(): tune it as ``clearing`` does
    _to_parent = to_parent
    _claims = claims


def _engine(url: str) -> sa.Engine:
    # One engine per worker process and database, made on first use (never at import).
    engine = _engines.get(url)
    if engine is None:
        engine = _engines[url] = make_engine(url)
    return engine


def _report(count: int) -> None:
    if _to_parent is not None and count:
        _to_parent.put(count)


def run_worker(task: ReplayTask) -> int:
    """A worker's whole share (in a worker process): runs, each started where ``choose_start``
    says and carried on while the next segment is free, until every segment is claimed. Each
    run's result goes to the parent as soon as the run ends (pickled by the queue's thread while
    the next run goes on), not with the worker's last: the run that reaches the head carries the
    shard's state and its trades, the largest result to pickle and load, which the parent would
    otherwise wait for after the last run. Returns how many it sent."""
    sent = 0
    while True:
        with _claims.get_lock():
            start = choose_start(_claims[:], task.segments)
            if start is None:
                return sent
            _claims[start] = 1
        _to_parent.put(replay_run(task, start, _claim))
        sent += 1


def _claim(index: int) -> bool:
    with _claims.get_lock():
        if _claims[index]:
            return False
        _claims[index] = 1
        return True


class _RunSnapshots:
    """The stored snapshots of a run's shard that it compares, read as the run reaches them."""

    def __init__(self, conn: sa.Connection, shard: int, compared: list[tuple[int, bool]]) -> None:
        self.conn = conn
        self.shard = shard
        self.compared = compared
        self.stored: dict[int, bytes] = {}

    def load(self, after: int, upto: int, only_end: bool) -> None:
        query = "SELECT position, state FROM snapshots WHERE shard = :s AND position > :after AND position <= :upto"
        if only_end:
            query += " AND position = :upto"
        rows = self.conn.execute(sa.text(query), {"s": self.shard, "after": after, "upto": upto})
        self.stored.update((int(p), bytes(b)) for p, b in rows)

    def check(self, _shard: int, position: int, state: LedgerState) -> None:
        self.compared.append((position, snapshot_matches(state, self.stored.pop(position))))


def replay_run(task: ReplayTask, start: int, claim: Callable[[int], bool]) -> SegmentResult:
    """Replay the planned segment ``start`` (from genesis or its snapshot), then each next one of
    its shard that ``claim`` grants, with the state carried over: no snapshot to decode, no
    trigger index to rebuild. Returns what the parent merges; the snapshot at the end of a run is
    compared with the state there (every stored snapshot on the way too, with ``all_snapshots``)."""
    started = time.perf_counter()
    first = task.segments[start]
    shard = first.shard
    result = SegmentResult(first)
    with _engine(task.url).connect() as conn:
        snapshots = _RunSnapshots(conn, shard, result.snapshots)
        replay = _run_replay(task, conn, first, snapshots)
        replay.sample_log = result.samples
        end = _feed_run(task, conn, replay, result, start, claim, snapshots)
        track = replay.shard(shard)
        if end.ends_at_snapshot and not task.all_snapshots and not track.pending:
            # The snapshot is compared only where no decision of the re-run is still expected.
            snapshots.load(end.after, end.upto, only_end=True)
            snapshots.check(shard, end.upto, track.state)
    replay.flush_batch()
    _collect(result, replay, track, Segment(shard, first.index, first.after, end.upto, end.ends_at_snapshot))
    result.seconds = time.perf_counter() - started
    return result


def _run_replay(task: ReplayTask, conn: sa.Connection, first: Segment, snapshots: _RunSnapshots) -> LogReplay:
    """The replay a run starts with: from genesis, or from the snapshot its first segment starts at."""
    shard = first.shard
    positions: set[tuple[int, int]] = set()
    if task.all_snapshots:
        query = "SELECT position FROM snapshots WHERE shard = :s AND position > :after"
        positions = {(shard, int(p)) for (p,) in conn.execute(sa.text(query), {"s": shard, "after": first.after})}
    replay = LogReplay(
        decide=task.decide,
        conservation_every=task.conservation_every,
        check_fills=task.check_fills,
        snapshot_check=snapshots.check,
        snapshot_positions=positions,
    )
    if first.after:
        raw = conn.execute(
            sa.text("SELECT state FROM snapshots WHERE shard = :shard AND position = :p"),
            {"shard": shard, "p": first.after},
        ).scalar_one()
        # The cursor of the rotating refresh is history, not state: unknown here (see merge).
        replay.shards[shard] = ShardTrack(state=state_from_bytes(raw), refresh_cursor=None)
    return replay


def _feed_run(
    task: ReplayTask,
    conn: sa.Connection,
    replay: LogReplay,
    result: SegmentResult,
    start: int,
    claim: Callable[[int], bool],
    snapshots: _RunSnapshots,
) -> Segment:
    """Feed the run's segments to ``replay``, from ``start`` on while ``claim`` grants the next one
    of the shard; returns the last segment fed."""
    shard = task.segments[start].shard
    margin = replay.margin_events
    fed = result.margin_fed
    count = 0
    row: Any = None
    index = start
    with ledger_context():
        while True:
            seg = task.segments[index]
            if task.all_snapshots:
                snapshots.load(seg.after, seg.upto, only_end=False)
            for row in iter_log(conn, shard=shard, after=seg.after, upto=seg.upto):
                if result.first is None:
                    result.first = (row[0], row[5])
                before = len(margin)
                replay.feed(row)
                if len(margin) != before:
                    fed.extend([row[0]] * (len(margin) - before))
                count += 1
                if count % PROGRESS_EVERY_EVENTS == 0:
                    _report(PROGRESS_EVERY_EVENTS)
            following = index + 1
            if following < len(task.segments) and task.segments[following].shard == shard and claim(following):
                index = following
                continue
            break
    _report(count % PROGRESS_EVERY_EVENTS)
    if row is not None:
        result.last = (row[0], row[5])
    return task.segments[index]


def _collect(result: SegmentResult, replay: LogReplay, track: ShardTrack, segment: Segment) -> None:
    """What the parent merges of a run that covered ``segment``."""
    result.segment = segment
    result.events = replay.events
    result.determinism = replay.determinism
    result.determinism_mismatches = replay.determinism_mismatches
    result.decisions_compared = replay.decisions_compared
    # Settled as they pair, the run's trades cost the parent two positions each instead of their
    # fills, the bulk of what a run would send otherwise.
    result.fills = replay.fills
    result.trades_settled = replay.trades_settled
    result.unmatched = replay.unmatched
    result.liquidation_fills = replay.liquidation_fills
    result.busts = replay.busts
    result.margin_events = replay.margin_events
    result.last_change = track.last_change
    result.written_at = track.written_at
    result.mark_change = track.mark_change
    result.mark_written = track.mark_written
    result.rates_change = track.rates_change
    result.refresh_cursor = track.refresh_cursor
    result.refresh_deferred = track.refresh_deferred
    result.pending = list(track.pending)
    if not segment.ends_at_snapshot:
        # As a snapshot (``state_bytes``), which the parent decodes as a run decodes the one it
        # starts from: without the trigger index (derived state, rebuilt by the next step that
        # needs it), and smaller and quicker to send than the objects pickled, at the end of the
        # run the parent waits for.
        result.state = state_bytes(track.state)
    else:
        upto = segment.upto
        result.end_ok = (upto, True) in result.snapshots and result.last is not None and result.last[0] == upto


# ---------------------------------------------------------------------------------------------
# the parent


@dataclass
class ParallelOutcome:
    replay: LogReplay | None  # None: the parallel result cannot be trusted (``reason``)
    jobs: int
    segments: int  # planned: the log cut at the usable snapshots
    runs: int = 0  # replayed: each a stretch of planned segments, from genesis or a snapshot
    reason: str | None = None
    snapshots: list[tuple[int, int, bool]] = field(default_factory=list)  # (shard, position, equal)
    conservation_at_head_only: bool = False
    worker_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": "parallel", "jobs": self.jobs, "segments": self.segments, "runs": self.runs}
        if self.reason is not None:
            out["fallback"] = self.reason
        if self.conservation_at_head_only:
            out["conservation"] = "sampled at the head only (several shards replayed in parallel)"
        out["worker_seconds"] = round(self.worker_seconds, 3)
        return out


def replay_parallel(
    engine: sa.Engine,
    segments: list[Segment],
    *,
    decide: bool,
    jobs: int,
    check_fills: bool = True,
    conservation_every: int = NO_SAMPLES,
    progress: Progress | None = None,
) -> ParallelOutcome:
    """Replay ``segments`` in ``jobs`` worker processes and merge them (see the module docstring)."""
    url = engine.url.render_as_string(hide_password=False)
    several_shards = len({s.shard for s in segments}) > 1
    every = NO_SAMPLES if several_shards else conservation_every
    task = ReplayTask(url, tuple(segments), decide, check_fills, every, decide)
    workers = max(1, min(jobs, len(segments)))
    outcome = ParallelOutcome(None, workers, len(segments), conservation_at_head_only=several_shards)
    context = worker_context()
    reports = context.Queue()  # progress counts and run results
    claims = context.Array("b", len(segments))  # all free; with a lock of its own
    results: list[SegmentResult] = []  # merge puts them in log order
    done = 0

    def take(item: int | SegmentResult) -> None:
        nonlocal done
        if isinstance(item, SegmentResult):
            results.append(item)
        elif progress is not None:
            done += item
            progress(done)

    try:
        with context.Pool(workers, initializer=_init_worker, initargs=(reports, claims)) as pool:
            pending = pool.map_async(run_worker, [task] * workers, chunksize=1)
            # Wait on the workers, not on the reports: the last run reports its count before it
            # returns, and a wait on the reports noticed the end up to a poll interval late.
            while not pending.ready():
                pending.wait(PROGRESS_POLL_S)
                for item in _drain(reports):
                    take(item)
            sent = sum(pending.get())
            while len(results) < sent:  # put before its worker returned: on its way, if not here
                take(reports.get(timeout=RESULT_WAIT_S))
    except Exception as error:  # a worker failed: the sequential replay will say what is wrong
        outcome.reason = f"a worker failed: {type(error).__name__}: {error}"[:500]
        return outcome
    finally:
        reports.close()
        reports.join_thread()
    outcome.runs = len(results)
    outcome.worker_seconds = sum(r.seconds for r in results)
    outcome.snapshots = sorted((r.segment.shard, p, ok) for r in results for p, ok in r.snapshots)
    replay, reason = merge(results, decide=decide, check_fills=check_fills, conservation_every=conservation_every)
    if progress is not None and replay is not None:
        progress(replay.events)
    outcome.replay, outcome.reason = replay, reason
    return outcome


def _drain(reports: Any) -> list[Any]:
    """What waits in the queue from the workers, without waiting for more."""
    items = []
    try:
        while True:
            items.append(reports.get_nowait())
    except queue.Empty:
        return items


def _untrusted(results: list[SegmentResult]) -> str | None:
    """Why a shard's runs, in log order, cannot be merged; None when they can."""
    first, last = results[0].segment, results[-1].segment
    if first.after != 0 or last.ends_at_snapshot:
        return f"shard {first.shard}: the runs do not reach from genesis to the head"
    for before, after in itertools.pairwise(results):
        seg = before.segment
        if seg.upto != after.segment.after:
            return f"shard {seg.shard}: the run to {seg.upto} is followed by one from {after.segment.after}"
        if not before.end_ok:
            return (
                f"shard {seg.shard}: the state re-run to {seg.upto} is not the snapshot there (or decisions "
                f"of the re-run are still expected after it): no run can start from it"
            )
        if after.first is None or before.last is None or after.first[1] == before.last[1]:
            return f"shard {seg.shard}: the cut at {seg.upto} is not between two batches"
    return None


def merge(
    results: list[SegmentResult], *, decide: bool, check_fills: bool, conservation_every: int
) -> tuple[LogReplay | None, str | None]:
    """One ``LogReplay`` equal to the sequential one, or None and why it cannot be trusted."""
    by_shard: dict[int, list[SegmentResult]] = {}
    for result in results:
        by_shard.setdefault(result.segment.shard, []).append(result)
    for shard_results in by_shard.values():
        shard_results.sort(key=lambda r: r.segment.index)
        reason = _untrusted(shard_results)
        if reason is not None:
            return None, reason

    # Shards in the order the sequential replay first meets them.
    def first_position(shard: int) -> int:
        first = by_shard[shard][0].first
        return first[0] if first is not None else NO_SAMPLES

    order = sorted(by_shard, key=first_position)
    merged = LogReplay(decide=decide, conservation_every=conservation_every, check_fills=check_fills)
    determinism: list[list[Finding]] = []
    margin: list[list[tuple[int, int, MarginEvent]]] = []
    samples_ok: list[int] = []
    settled = 0
    for shard in order:
        state = by_shard[shard][-1].state
        if state is None:
            return None, f"shard {shard}: the last segment returned no state"
        merged.shards[shard] = ShardTrack(state=state_from_bytes(state))
        findings, events = _merge_shard(merged, shard, by_shard[shard], samples_ok)
        settled += sum(len(result.trades_settled) for result in by_shard[shard])
        determinism.append(findings)
        margin.append(events)
    if len(merged.trades_settled) != settled or not merged.trades_settled.keys().isdisjoint(merged.fills):
        return None, "a trade one segment settled has more fills in the log: the sequential replay names it"
    if len(order) > 1:
        # Several shards: one log order, by position (fills by their first one, as the sequential
        # replay inserts them).
        merged.fills = dict(
            sorted(
                ((trade_id, sorted(entries)) for trade_id, entries in merged.fills.items()),
                key=lambda item: item[1][0][0],
            )
        )
        merged.liquidation_fills.sort()
    merged.determinism = list(heapq.merge(*determinism, key=lambda f: f.position or 0))[:FINDINGS_MAX]
    merged.margin_events = [event for _fed, _seq, event in heapq.merge(*margin, key=lambda e: (e[0], e[1]))]
    merged.conservation_checks = sorted(samples_ok)
    merged.conservation_due = merged.events + conservation_every
    return merged, None


def _merge_shard(
    merged: LogReplay, shard: int, shard_results: list[SegmentResult], samples_ok: list[int]
) -> tuple[list[Finding], list[tuple[int, int, MarginEvent]]]:
    """Merge one shard's runs, in log order, into ``merged`` (whose track of the shard holds the
    last run's state); the conservation samples taken at balanced points go to ``samples_ok``.
    Returns the shard's determinism findings and its margin events (with the position that fed
    each and its sequence), for the merge across shards."""
    track = merged.shards[shard]
    last = shard_results[-1]
    cursor = 0
    unmatched_in: dict[tuple[str, str, str], int] = {}
    findings: list[Finding] = []
    events: list[tuple[int, int, MarginEvent]] = []
    for result in shard_results:
        cursor = _refresh_windows(result, cursor)
        track.written_at.update(result.written_at)
        track.last_change.update(result.last_change)
        track.mark_change.update(result.mark_change)
        track.mark_written.update(result.mark_written)
        track.rates_change.update(result.rates_change)
        merged.events += result.events
        merged.decisions_compared += result.decisions_compared
        merged.determinism_mismatches += result.determinism_mismatches
        findings.extend(result.determinism)
        for position, imbalance, unmatched_local in result.samples:
            # The whole log's condition: no fill unmatched (the signed counts add up).
            if _balanced(unmatched_in, unmatched_local):
                samples_ok.append(position)
                if imbalance and len(merged.conservation_bad) < FINDINGS_MAX:
                    merged.conservation_bad.append(imbalance_finding(position, imbalance))
        unmatched_in = _add_counts(unmatched_in, result.unmatched)
        for trade_id, entries in result.fills.items():
            merged.fills.setdefault(trade_id, []).extend(entries)
        merged.trades_settled.update(result.trades_settled)
        merged.liquidation_fills.extend(result.liquidation_fills)
        merged.busts.extend(result.busts)  # matched with their fills at the end (resolve_busts)
        events.extend(
            zip(
                result.margin_fed,
                range(len(events), len(events) + len(result.margin_fed)),
                result.margin_events,
                strict=True,
            )
        )
    track.head = last.last[0] if last.last else 0
    track.refresh_cursor = cursor
    merged.unmatched = _add_counts(merged.unmatched, unmatched_in)
    track.pending = deque(last.pending)
    merged.head = max(merged.head, track.head)
    return findings, events


def _refresh_windows(result: SegmentResult, cursor: int) -> int:
    """The rotating refresh's windows a run from a snapshot deferred (its cursor unknown there),
    re-enacted from ``cursor``, the cursor the run before ended with, into the run's
    ``written_at``. Returns the cursor at the run's end."""
    if result.refresh_cursor is not None:
        return result.refresh_cursor
    written = result.written_at
    for end, holders in result.refresh_deferred:
        window, cursor = refresh_window(holders, cursor)
        for account_id in window:
            if written.get(account_id, 0) < end:
                written[account_id] = end
    return cursor


def _add_counts(
    first: dict[tuple[str, str, str], int], second: dict[tuple[str, str, str], int]
) -> dict[tuple[str, str, str], int]:
    total = dict(first)
    for key, count in second.items():
        count += total.get(key, 0)
        if count:
            total[key] = count
        else:
            total.pop(key, None)
    return total


def _balanced(first: dict[tuple[str, str, str], int], second: dict[tuple[str, str, str], int]) -> bool:
    if len(first) != len(second):
        return False
    return all(first.get(key, 0) + count == 0 for key, count in second.items())
