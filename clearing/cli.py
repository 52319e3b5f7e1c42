"""The ``clearing`` command: a thin argparse dispatcher.

Each subcommand's module is imported only when that subcommand runs, so ``clearing --help``
stays fast. To add a command, write ``add_<name>(subparsers)`` that registers its parser with
``set_defaults(handler=...)`` and list it in ``COMMANDS``; a handler takes the parsed arguments
and returns the exit status.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Handler = Callable[[argparse.Namespace], int]
Subparsers = Any  # argparse._SubParsersAction, which is private


class OperatingError(RuntimeError):
    """A command cannot do what was asked for a reason a person can fix: ``main`` prints the
    message as one line, without a traceback, and exits 1."""

# ------------------------------------------------------------------------------------------------
# clearing services start|status|stop


def _services_start(args: argparse.Namespace) -> int:
    from clearing.embedded import ensure_services
    from clearing.settings import get_settings

    services = ensure_services(get_settings(), need_broker=not args.no_broker)
    result = {
        "database_url": services.database_url,
        "kafka_bootstrap": services.kafka_bootstrap or None,
        "broker_instance": services.broker_instance,
        "embedded_database": services.embedded_database,
        "embedded_broker": services.embedded_broker,
    }
    if not services.embedded_database:
        from sqlalchemy.engine import make_url

        result["database_url"] = make_url(services.database_url).render_as_string(hide_password=True)
    _emit(result, args.json)
    return 0


def _services_status(args: argparse.Namespace) -> int:
    from clearing.embedded import services_status
    from clearing.settings import get_settings

    _emit(services_status(get_settings()), args.json)
    return 0


def _services_stop(args: argparse.Namespace) -> int:
    from clearing.embedded import stop_services
    from clearing.settings import get_settings

    stopped = stop_services(get_settings())
    if args.json:
        _emit({"stopped": stopped}, True)
    else:
        out("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def add_services(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("services", help="start, inspect or stop the embedded PostgreSQL and broker")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    start = actions.add_parser("start", help="start (or find) the embedded services under CLEARING_HOME")
    start.add_argument("--no-broker", action="store_true", help="start only the database")
    start.set_defaults(handler=_services_start)
    status = actions.add_parser("status", help="say what runs where, starting nothing")
    status.set_defaults(handler=_services_status)
    stop = actions.add_parser("stop", help="stop the embedded services under CLEARING_HOME")
    stop.set_defaults(handler=_services_stop)
    for sub in (start, status, stop):
        sub.add_argument("--json", action="store_true", help="print JSON")


# ------------------------------------------------------------------------------------------------
# clearing db upgrade


def _db_upgrade(args: argparse.Namespace) -> int:
    from clearing.embedded import ensure_services
    from clearing.settings import get_settings
    from clearing.store.db import current_revision, set_role_passwords, upgrade

    settings = get_settings()
    services = ensure_services(settings, need_broker=False)
    upgrade(services.database_url, args.revision)
    out(f"database at revision {current_revision(services.database_url)}")
    roles = set_role_passwords(services.database_url, settings.role_passwords())
    if roles:
        out(f"set the password of {', '.join(roles)}")
    return 0


def add_db(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("db", help="database schema")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    upgrade = actions.add_parser("upgrade", help="apply the Alembic migrations")
    upgrade.add_argument("revision", nargs="?", default="head", help="target revision (default: head)")
    upgrade.set_defaults(handler=_db_upgrade)


# ------------------------------------------------------------------------------------------------
# clearing run | simulate | demo | account show


RUN_HALTED_EXIT = 3  # `clearing run` stopped because it cannot go on safely; the log says why and what to do


# pg_try_advisory_lock(key, shard) (two int4 keys): held by the `clearing run` of a shard for its whole life.
SHARD_WRITER_LOCK_KEY = 730_195_502


def _shard_writer_lock(database_url: str, shard: int) -> Any:
    """A connection that holds the shard's writer lock for as long as it is open, or an
    OperatingError saying who holds it. Why at start: the log's own check (the head a writer
    expects) catches a second writer only at its first batch, after it has loaded and while
    both compete; refusing to start is the sentence a person can act on."""
    import sqlalchemy as sa

    from clearing.store.db import make_engine

    engine = make_engine(database_url, poolclass=sa.pool.NullPool,
                         connect_args={"application_name": f"clearing run --shard {shard} (pid {os.getpid()})"})
    conn = engine.connect()
    taken = conn.execute(
        sa.text("SELECT pg_try_advisory_lock(:key, :shard)"), {"key": SHARD_WRITER_LOCK_KEY, "shard": shard}
    ).scalar_one()
    conn.commit()
    if taken:
        return conn
    holder = conn.execute(
        sa.text(
            "SELECT a.application_name, a.backend_start FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 "
            "AND l.classid::text = CAST(:key AS text) AND l.objid::text = CAST(:shard AS text) LIMIT 1"
        ),
        {"key": SHARD_WRITER_LOCK_KEY, "shard": shard},
    ).first()
    conn.close()
    engine.dispose()
    who = f"{holder.application_name}, connected since {holder.backend_start:%Y-%m-%d %H:%M:%S %Z}" if holder else "?"
    raise OperatingError(
        f"shard {shard} already has a ledger running ({who}): stop it first (one writer per shard), "
        "or start this one on another shard with --shard N --shards M"
    )


def _run(args: argparse.Namespace) -> int:
    from clearing.embedded import ensure_services
    from clearing.engine.runner import LedgerHalted
    from clearing.settings import get_settings
    from clearing.store.db import SchemaNotCurrent, prepare_schema
    from consumers.process import run_ledger

    # A SIGTERM while the services are found and the state loads stops the run cleanly too.
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    settings = get_settings()
    services = ensure_services(settings)
    try:
        prepare_schema(services.database_url, settings.database_role, settings.database_role_password)
    except SchemaNotCurrent as error:
        sys.stderr.write(f"{error}\n")
        return 2
    lock = _shard_writer_lock(services.database_url, args.shard)
    for name in ("clearing", "consumers"):  # start, progress and fault lines (clearing/engine/runner.py)
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        stats = run_ledger(settings, services, shard=args.shard, shards=args.shards, metrics_port=args.metrics_port,
                           metrics_host=args.metrics_host, reread_past_end=args.reread_past_end, stop=stop)
    except LedgerHalted as halted:
        logging.getLogger("clearing.engine.runner").error("event=ledger_halted reason=%s", json.dumps(str(halted)))
        return RUN_HALTED_EXIT
    finally:
        lock.close()  # the session ends: the lock is released
    out(
        f"stopped: {stats.records} records, {stats.appended} events appended, {stats.decisions} decisions, "
        f"{stats.duplicates} duplicates, {stats.dead_letters} dead letters; log at position {stats.last_position}"
    )
    return 0


def add_run(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("run", help="consume the input topics and run the ledger until stopped")
    parser.add_argument("--shard", type=int, default=0, help="this process's shard (default 0)")
    parser.add_argument("--shards", type=int, default=1, help="how many shards the accounts are split into")
    parser.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                        help="serve Prometheus metrics of this process on PORT")
    parser.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST",
                        help="address the metrics server listens on (default 127.0.0.1)")
    parser.add_argument("--reread-past-end", action="store_true",
                        help="read partitions whose stored offsets are past the broker's end from their beginning "
                             "(after the broker lost its messages and the inputs were published again)")
    parser.set_defaults(handler=_run)


def _ledger_used_until(database_url: str) -> Any:
    """The latest event time in the ledger's log, None when it holds none (or has no schema yet)."""
    import sqlalchemy as sa

    from clearing.store.db import make_engine

    engine = make_engine(database_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            if not conn.execute(sa.text("SELECT to_regclass('events') IS NOT NULL")).scalar_one():
                return None
            return conn.execute(sa.text("SELECT max(occurred_at) FROM events")).scalar_one()
    finally:
        engine.dispose()


def _simulate(args: argparse.Namespace) -> int:
    from decimal import Decimal

    from clearing.embedded import ensure_services
    from clearing.settings import get_settings
    from clearing.simulate import RunPlan, Scenario, generate, latest_published, next_run, publish
    from consumers.kafka_input import ensure_topics

    settings = get_settings()
    services = ensure_services(settings)
    ensure_topics(services.kafka_bootstrap, settings.topic_prefix)
    times = [t for t in (_ledger_used_until(services.database_url),
                         latest_published(services.kafka_bootstrap, settings.topic_prefix)) if t is not None]
    plan = next_run(max(times) if times else None)
    if args.id_prefix is not None:
        plan = RunPlan(args.id_prefix, plan.start, f"--id-prefix was given; {plan.reason}")
    scenario = Scenario(
        seed=args.seed,
        accounts=args.accounts,
        trades=args.trades,
        steps=args.steps,
        crash_at=args.crash_at,
        crash_depth=Decimal(args.crash_depth),
        id_prefix=plan.id_prefix,
        start=plan.start,
        options=args.options,
        portfolio_share=args.portfolio_share,
        dynamic_margin=args.dynamic_margin,
        sample_seconds=args.sample_seconds,
    )
    messages = list(generate(scenario))
    ids = f"ids prefixed {plan.id_prefix!r} (accounts {plan.id_prefix}ACC-00001...)" if plan.id_prefix else "plain ids"
    sys.stderr.write(f"simulation run with {ids}, times from {plan.start.isoformat()}: {plan.reason}\n")
    ends = publish(services.kafka_bootstrap, settings.topic_prefix, iter(messages),
                   progress=lambda n: sys.stderr.write(f"\rpublished {n}/{len(messages)}") if n % 10_000 == 0 else None)
    sys.stderr.write("\n")
    trades = sum(1 for message in messages if message.kind == "fills") // 2
    _emit({"published": len(messages), "trades": trades, "id_prefix": plan.id_prefix, "start": plan.start.isoformat(),
           "end_offsets": {f"{t}[{p}]": o for (t, p), o in sorted(ends.items())}}, args.json)
    return 0


def add_simulate(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("simulate", help="publish a deterministic synthetic market to the input topics")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--accounts", type=int, default=50)
    parser.add_argument("--trades", type=int, default=2_000)
    parser.add_argument("--steps", type=int, default=200, help="mark updates per instrument")
    parser.add_argument("--crash-at", type=float, default=None, metavar="FRACTION",
                        help="start a crash after this fraction of the steps (e.g. 0.7)")
    parser.add_argument("--crash-depth", default="0.25", help="fraction the prices fall in the crash")
    parser.add_argument("--id-prefix", default=None, metavar="PREFIX",
                        help="prefix of every id of this run (default: none into an unused ledger; otherwise one "
                        "derived from the run's start, which follows the ledger's last event)")
    parser.add_argument("--options", action="store_true",
                        help="trade the bundled BTC and ETH options too (a quarter of the trades; mostly puts written)")
    parser.add_argument("--portfolio-share", type=float, default=0.0, metavar="FRACTION",
                        help="put this share of the accounts on the portfolio margin model, each holding an option "
                        "book (mostly hedged: covered calls, protective puts, collars, spreads; some naked short "
                        "options) instead of trading at random (e.g. 0.2)")
    parser.add_argument("--dynamic-margin", action="store_true",
                        help="open with risk parameters whose margin scales with volatility (dynamic_margin), "
                        "sampled every --sample-seconds of event time; steps are spaced so the crash spans samples")
    parser.add_argument("--sample-seconds", type=int, default=60, help="dynamic margin's sample period (at least 60)")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=_simulate)


def _demo(args: argparse.Namespace) -> int:
    from clearing.demo import run_demo
    from clearing.settings import get_settings

    return run_demo(get_settings(), accounts=args.accounts, trades=args.trades, seed=args.seed)


def add_demo(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("demo", help="start everything, simulate a market, run the ledger, show the result")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--trades", type=int, default=5_000)
    parser.set_defaults(handler=_demo)


def _account_show(args: argparse.Namespace) -> int:
    from clearing.embedded import ledger_services
    from clearing.settings import get_settings
    from clearing.store import queries
    from clearing.store.db import make_engine

    question = None
    if args.as_of is not None or args.as_of_ledger_time is not None or args.as_of_event_time is not None:
        from clearing.audit.asof import AsOfError, parse_as_of

        try:
            if args.as_of is not None:
                question = parse_as_of(args.as_of)
            elif args.as_of_ledger_time is not None:
                question = parse_as_of(args.as_of_ledger_time, "ledger_time")
            else:
                question = parse_as_of(args.as_of_event_time, "event_time")
        except AsOfError as error:
            sys.stderr.write(f"clearing account show: {error}\n")
            return 2
    engine = make_engine(ledger_services(get_settings()).database_url)
    try:
        if question is not None:
            from clearing.audit.asof import AsOfError, account_as_of

            try:
                view = account_as_of(engine, args.account_id, question, with_adl=True)
            except AsOfError as error:
                sys.stderr.write(f"clearing account show: {error}\n")
                return 2
        else:
            from clearing.audit.asof import add_adl_standing, live_adl_standing

            with engine.connect() as conn:
                view = queries.account_view(conn, args.account_id)
                if view is not None:
                    add_adl_standing(view, live_adl_standing(conn, args.account_id))
    finally:
        engine.dispose()
    if view is None:
        when = "" if question is None else f" at {question.describe()}"
        sys.stderr.write(f"no account {args.account_id!r} in the ledger{when}\n")
        return 1
    _emit(view, args.json)
    return 0


def add_account(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("account", help="look at one account")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser(
        "show",
        help="balances, positions, margin and the log position they are as of",
        description="A system account (system:fees, system:insurance-fund, system:funding-pool) is kept by every "
        "shard: its balances are shown per shard and in total.",
    )
    show.add_argument("account_id")
    when = show.add_mutually_exclusive_group()
    when.add_argument("--as-of", default=None, metavar="POSITION|TIMESTAMP",
                      help="at a log position, or at an event time (the same as --as-of-event-time)")
    when.add_argument("--as-of-ledger-time", default=None, metavar="TIMESTAMP",
                      help="as the ledger knew it at this time: the events recorded by then (recorded_at)")
    when.add_argument("--as-of-event-time", default=None, metavar="TIMESTAMP",
                      help="built from the events that had happened by this time (occurred_at), late arrivals "
                      "included where they happened")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=_account_show)


# ------------------------------------------------------------------------------------------------
# clearing risk evaluate FILE|- [--json]


def _risk_evaluate(args: argparse.Namespace) -> int:
    from clearing.risk import run_risk_evaluate

    return run_risk_evaluate(args.file, args.json)


def add_risk(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("risk", help="what-if margin evaluation")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    evaluate = actions.add_parser("evaluate", help="the risk calculator: parameters, marks, an account in; margin out")
    evaluate.add_argument("file", metavar="FILE", help="calculator input JSON (CONTRACT.md); - reads standard input")
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(handler=_risk_evaluate)


# ------------------------------------------------------------------------------------------------
# clearing api [--host H] [--port P] [--dev]


def _api(args: argparse.Namespace) -> int:
    from clearing.api.app import create_app, make_reader_engine, serve
    from clearing.api.auth import generate_dev_token
    from clearing.embedded import ledger_services
    from clearing.settings import get_settings

    settings = get_settings()
    tokens = settings.api_token_list()
    if not tokens:
        if not args.dev:
            sys.stderr.write("refusing to start: set CLEARING_API_TOKENS (comma-separated bearer tokens), "
                             "or run with --dev for a one-off generated token\n")
            return 2
        tokens = [generate_dev_token()]
        out(f"development token (valid until this process stops): {tokens[0]}")
        sys.stdout.flush()
    services = ledger_services(settings)
    engine = make_reader_engine(
        services.database_url, role=settings.reader_role, password=settings.reader_role_password
    )
    try:
        serve(create_app(engine, tokens), args.host, args.port)
    finally:
        engine.dispose()
    return 0


def add_api(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("api", help="serve the read-only back-office HTTP API (OpenAPI at /openapi.json)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    parser.add_argument("--dev", action="store_true",
                        help="without CLEARING_API_TOKENS, generate a token and print it instead of refusing to start")
    parser.set_defaults(handler=_api)


# ------------------------------------------------------------------------------------------------
# clearing audit report ACCOUNT [--from T] [--to T] [--output FILE]


def _audit_actions(subparsers: Subparsers) -> Any:
    """The ``clearing audit ACTION`` subparsers, shared by every ``add_audit_*``: the ``audit``
    parser is created by whichever runs first and found by the others (argparse refuses a second
    parser of the same name)."""
    parser = subparsers.choices.get("audit")
    if parser is None:
        parser = subparsers.add_parser("audit", help="verify, explain and report on the log")
        return parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action in parser._actions:  # argparse keeps its subparsers action only there
        if isinstance(action, argparse._SubParsersAction):
            return action
    return parser.add_subparsers(dest="action", required=True, metavar="ACTION")


def _audit_report(args: argparse.Namespace) -> int:
    import re
    from pathlib import Path

    from clearing.audit.report import ReportError, parse_time, write_report
    from clearing.embedded import ledger_services, resolve_home
    from clearing.settings import get_settings
    from clearing.store.db import make_engine

    try:
        start = parse_time(args.start) if args.start else None
        end = parse_time(args.end) if args.end else None
    except ReportError as error:
        sys.stderr.write(f"{error}\n")
        return 2
    settings = get_settings()
    if args.output:
        output = Path(args.output)
    else:
        output = resolve_home(settings) / "reports" / (re.sub(r"[^A-Za-z0-9_.-]", "_", args.account_id) + ".html")
    services = ledger_services(settings)
    engine = make_engine(services.database_url, role=settings.reader_role, password=settings.reader_role_password)
    try:
        timeline = write_report(engine, args.account_id, output, start=start, end=end)
    except ReportError as error:
        sys.stderr.write(f"{error}\n")
        return 1
    finally:
        engine.dispose()
    out(f"wrote {output}: {timeline.events_total} events of {args.account_id}, {len(timeline.risk)} margin points, "
        f"{len(timeline.markers)} margin-call and liquidation events")
    return 0


def add_audit_report(subparsers: Subparsers) -> None:
    report = _audit_actions(subparsers).add_parser(
        "report", help="a self-contained HTML report of one account: margin and marks over time, calls, events"
    )
    report.add_argument("account_id", metavar="ACCOUNT")
    report.add_argument("--from", dest="start", default=None, metavar="T", help="start of the period (RFC 3339)")
    report.add_argument("--to", dest="end", default=None, metavar="T", help="end of the period (RFC 3339, exclusive)")
    report.add_argument("--output", default=None, metavar="FILE",
                        help="where to write the HTML (default: CLEARING_HOME/reports/ACCOUNT.html)")
    report.set_defaults(handler=_audit_report)


# ------------------------------------------------------------------------------------------------
# clearing audit verify [--json] | audit explain ID [--json] | projections rebuild [--check-only] [--json]


def _owner_engine() -> Any:
    from clearing.embedded import ledger_services
    from clearing.settings import get_settings
    from clearing.store.db import make_engine

    return make_engine(ledger_services(get_settings()).database_url)


def _audit_verify(args: argparse.Namespace) -> int:
    from clearing.audit.published import CheckpointSource
    from clearing.audit.verify import run_verify
    from clearing.settings import get_settings

    checkpoints = CheckpointSource.from_settings(get_settings(), required=args.require_checkpoints)
    engine = _owner_engine()
    try:
        return run_verify(engine, args.json, jobs=args.jobs, checkpoints=checkpoints)
    finally:
        engine.dispose()


def _audit_explain(args: argparse.Namespace) -> int:
    from clearing.audit.explain import run_explain

    engine = _owner_engine()
    try:
        return run_explain(engine, args.decision_id, args.json)
    finally:
        engine.dispose()


def _add_jobs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="replay runs between snapshots in N processes (default: the CPU count; 1: one sequential fold)",
    )


def add_audit(subparsers: Subparsers) -> None:
    actions = _audit_actions(subparsers)
    verify = actions.add_parser(
        "verify", help="hash chain, replay determinism, projections = fresh replay, conservation, counterparts"
    )
    verify.add_argument("--json", action="store_true")
    verify.add_argument(
        "--require-checkpoints",
        action="store_true",
        help="fail when the checkpoints topic cannot be read (by default: reported as not checked)",
    )
    _add_jobs(verify)
    verify.set_defaults(handler=_audit_verify)
    explain = actions.add_parser(
        "explain",
        help="the inputs and arithmetic behind a margin call, liquidation, margin-model or margin-rate decision",
    )
    explain.add_argument(
        "decision_id",
        metavar="ID",
        help="a margin call id (MC-...), a liquidation id (L-...), an ADL id (ADL-...), a margin-model request id, "
        "or the log position of any of these or of a margin-rate change (MarginRatesChanged)",
    )
    explain.add_argument("--json", action="store_true")
    explain.set_defaults(handler=_audit_explain)


def _projections_rebuild(args: argparse.Namespace) -> int:
    from clearing.audit.rebuild import RebuildRefused, rebuild
    from clearing.audit.verify import PlainProgress

    engine = _owner_engine()  # the tables' owner: the ledger's role may not CREATE
    try:
        progress = PlainProgress(None)
        report = rebuild(engine, swap=not args.check_only, jobs=args.jobs, progress=lambda n: progress("replay", n))
    except RebuildRefused as error:
        sys.stderr.write(f"{error}\n")
        return 2
    finally:
        engine.dispose()
    data = report.as_dict()
    if args.json:
        _emit(data, True)
    else:
        out(f"replayed {report.events} events to position {report.head} in {report.seconds_replay:.1f} s; "
            + ("swapped in" if report.swapped else "not swapped (--check-only)")
            + f" in {report.seconds_swap:.2f} s; rows {data['rows_written']}")
        for table in report.tables:
            state = "identical" if table.ok and not table.notes else ("differs" if not table.ok else "notes")
            out(f"  {table.table}: {state} (previous {table.rows_live} rows, rebuilt {table.rows_expected})")
            for line in table.problems + table.notes:
                out(f"    {line}")
    return 0


def add_projections(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("projections", help="projection tables")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    rebuild = actions.add_parser("rebuild", help="replay the log into shadow tables, compare, swap them in")
    rebuild.add_argument("--check-only", action="store_true", help="build and compare, keep the live tables")
    rebuild.add_argument("--json", action="store_true")
    _add_jobs(rebuild)
    rebuild.set_defaults(handler=_projections_rebuild)


# ------------------------------------------------------------------------------------------------
# clearing liquidator


def _liquidator(args: argparse.Namespace) -> int:
    from clearing.embedded import ensure_services
    from clearing.liquidator import run_liquidator
    from clearing.settings import get_settings
    from consumers.kafka_input import ensure_topics

    settings = get_settings()
    services = ensure_services(settings)
    ensure_topics(services.kafka_bootstrap, settings.topic_prefix)
    import signal
    import threading

    from clearing.liquidator import MARKET_MAKER

    try:
        offsets = {int(p): int(o) for p, o in (item.split(":", 1) for item in args.offset)}
    except ValueError:
        sys.stderr.write(f"clearing liquidator: --offset takes PARTITION:OFFSET (whole numbers), not {args.offset}\n")
        return 2
    logging.getLogger("clearing").setLevel(logging.INFO)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda _signum, _frame: stop.set())
    out(f"liquidator: filling the liquidation orders of {settings.topic_prefix}liquidation-orders at their mark "
        f"against {MARKET_MAKER}, until Ctrl-C or SIGTERM")
    sys.stdout.flush()
    stats = run_liquidator(services.kafka_bootstrap, settings.topic_prefix, offsets=offsets, stop=stop)
    out(f"liquidator stopped: {stats.orders} liquidation orders read, {stats.filled} filled, {stats.skipped} skipped")
    return 0


def add_liquidator(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "liquidator", help="simulated exchange: fill the ledger's liquidation orders at their mark against MM-LIQUIDITY"
    )
    parser.add_argument("--offset", action="append", default=[], metavar="PARTITION:OFFSET",
                        help="start this partition of liquidation-orders at OFFSET (default: the beginning)")
    parser.set_defaults(handler=_liquidator)


# ------------------------------------------------------------------------------------------------
# clearing params apply FILE


def _params_apply(args: argparse.Namespace) -> int:
    from clearing.embedded import ensure_services
    from clearing.settings import get_settings
    from consumers.admin import ParametersRejected, publish_parameters, validated
    from consumers.kafka_input import ensure_topics

    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
        document = json.loads(text)
        parameters = validated(document)
    except (OSError, ValueError, ParametersRejected) as error:
        sys.stderr.write(f"clearing params apply: {error}\n")
        return 2
    if args.check:
        from clearing.domain.params import booking_report

        out(f"valid: risk parameters {parameters.version}, {len(parameters.instruments)} instruments, "
            f"{len(parameters.assets)} assets")
        for line in booking_report(parameters):
            out(f"  {line}")
        return 0
    settings = get_settings()
    services = ensure_services(settings)
    ensure_topics(services.kafka_bootstrap, settings.topic_prefix)
    effective = None
    if args.effective_at is not None:
        from datetime import datetime

        try:
            effective = datetime.fromisoformat(args.effective_at.replace("Z", "+00:00"))
        except ValueError:
            sys.stderr.write(f"clearing params apply: --effective-at {args.effective_at!r} is not RFC 3339\n")
            return 2
        if effective.tzinfo is None:
            sys.stderr.write("clearing params apply: --effective-at needs a zone (e.g. Z)\n")
            return 2
    topic, partition, offset = publish_parameters(
        services.kafka_bootstrap, settings.topic_prefix, document, effective_at=effective
    )
    out(f"published risk parameters {parameters.version} to {topic}[{partition}] at offset {offset}; "
        "they take effect at their place in the log once the ledger (clearing run) consumes them")
    return 0


def add_params(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("params", help="risk parameters")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    apply = actions.add_parser("apply", help="validate a risk parameter document and publish it on the admin topic")
    apply.add_argument("file", help="JSON document (CONTRACT.md), or - for standard input")
    apply.add_argument("--check", action="store_true", help="only validate; publish nothing")
    apply.add_argument("--effective-at", default=None, metavar="TIMESTAMP",
                       help="event time from which the document is in force (RFC 3339; default now)")
    apply.set_defaults(handler=_params_apply)


COMMANDS: list[Callable[[Subparsers], None]] = [
    add_services, add_db, add_run, add_simulate, add_demo, add_account, add_risk, add_api, add_audit_report,
    add_audit, add_projections, add_liquidator, add_params,
]


def out(text: str) -> None:
    """Write one line of command output to standard output (the CLI's only way to print)."""
    sys.stdout.write(text + "\n")


def _emit(data: Any, as_json: bool) -> None:
    if as_json:
        out(json.dumps(data, indent=2, sort_keys=True, default=str))
        return
    _print_tree(data, 0)


def _print_tree(data: Any, indent: int) -> None:
    """Nested dicts and lists as indented ``key: value`` lines; a list of records as one
    ``- key: value, key: value`` line per record."""
    pad = "  " * indent
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(value, dict | list) and value:
                out(f"{pad}{key}:")
                _print_tree(value, indent + 1)
            else:
                out(f"{pad}{key}: {_scalar(value)}")
    elif isinstance(data, list):
        for item in data:
            if isinstance(item, dict):
                out(f"{pad}- " + ", ".join(f"{key}: {_scalar(value)}" for key, value in item.items()))
            else:
                out(f"{pad}- {_scalar(item)}")
    else:
        out(f"{pad}{_scalar(data)}")


def _scalar(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | dict):
        return json.dumps(value, default=str) if value else "none"
    return str(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clearing",
        description="Event-sourced clearinghouse ledger and margin engine.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from clearing.runtime import tune_gc

    tune_gc()  # every command: the long ones (run, audit, rebuild) are why (clearing/runtime.py)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        sys.stderr.write(f"clearing {args.command}: interrupted\n")
        return 130
    except Exception as error:
        sentence = operating_error(error)
        if sentence is None:
            raise  # a bug: the traceback is what a developer needs
        sys.stderr.write(f"clearing {args.command}: {sentence}\n")
        return 1


def operating_error(error: BaseException) -> str | None:
    """The one sentence for an error of operation (no ledger where one was looked for, a second
    writer on a shard, a database or broker that cannot be reached), or None for anything else.
    Modules are looked up only if the command imported them: ``clearing --help`` stays fast."""
    if isinstance(error, OperatingError):
        return str(error)
    embedded = sys.modules.get("clearing.embedded")
    if embedded is not None and isinstance(error, embedded.NoLedgerError | embedded.EmbeddedServiceError):
        return str(error)
    ledger = sys.modules.get("clearing.engine.ledger")
    if ledger is not None and isinstance(error, ledger.LedgerBrokenError):
        return f"the ledger stopped: {error}"
    database = sys.modules.get("sqlalchemy.exc")
    if database is not None and isinstance(error, database.OperationalError):
        cause = str(error.orig if error.orig is not None else error).strip().splitlines()
        return "cannot reach the database: " + (cause[0] if cause else type(error).__name__)
    kafka = sys.modules.get("kafka.errors")
    unreachable = tuple(
        getattr(kafka, name) for name in ("NoBrokersAvailable", "KafkaTimeoutError") if hasattr(kafka, name)
    ) if kafka is not None else ()
    if unreachable and isinstance(error, unreachable):
        return "cannot reach the Kafka broker (CLEARING_KAFKA_BOOTSTRAP, or the embedded one): is it running?"
    return None


if __name__ == "__main__":
    sys.exit(main())
