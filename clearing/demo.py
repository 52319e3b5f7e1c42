"""``clearing demo``: one command that shows a person what the ledger does.

It starts (or finds) the embedded PostgreSQL and broker, applies the migrations, publishes a
deterministic market with a crash and a few malformed messages, runs the ledger until it has
consumed everything it was sent, and prints what happened: the log, the decisions, the dead
letters, a few accounts, and the checks that the books balance and the hash chain holds.
"""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from clearing import liquidator
from clearing.audit.chain import verify_chain
from clearing.domain.fold import conservation
from clearing.domain.state import SYSTEM_ACCOUNTS
from clearing.embedded import ensure_services
from clearing.engine.ledger import Ledger
from clearing.settings import Settings
from clearing.simulate import Message, Scenario, generate, publish
from clearing.store import queries
from clearing.store.db import make_engine, upgrade

CATCH_UP_TIMEOUT_S = 600.0

# Messages a careless producer might send: each must land in the dead letters with a reason.
BAD_MESSAGES = [
    Message(
        "fills",
        "ACC-00001",
        {
            "type": "fill",
            "fill_id": "BAD-1",
            "trade_id": "BAD-T1",
            "account_id": "ACC-00001",
            "instrument": "BTCUSDT",
            "side": "buy",
            "quantity": 0.5,
            "price": "65000",
            "occurred_at": "2026-11-23T00:00:01Z",
        },
    ),
    Message(
        "fills",
        "ACC-00002",
        {
            "type": "fill",
            "fill_id": "BAD-2",
            "trade_id": "BAD-T2",
            "account_id": "ACC-00002",
            "instrument": "DOGEUSDT",
            "side": "buy",
            "quantity": "10",
            "price": "0.1",
            "occurred_at": "2026-11-23T00:00:01Z",
        },
    ),
    Message(
        "transfers",
        "ACC-00003",
        {
            "type": "deposit",
            "transfer_id": "BAD-3",
            "account_id": "ACC-00003",
            "asset": "USDT",
            "amount": "-100",
            "occurred_at": "2026-11-23T00:00:01Z",
        },
    ),
]


def _counts_of(offsets: dict[tuple[str, int], int]) -> int:
    return sum(offsets.values())


def run_demo(
    settings: Settings, console: Console | None = None, *, accounts: int = 200, trades: int = 5_000, seed: int = 7
) -> int:
    console = console or Console()
    console.print(
        Panel(
            "[bold]clearing[/bold]: an event-sourced clearinghouse ledger. Fills, deposits, withdrawals and "
            "price marks go in through Kafka; every one of them, and every decision the ledger takes because "
            "of them (margin calls, liquidation orders, withdrawal approvals), is appended to an immutable, "
            "hash-chained log in PostgreSQL, from which balances, positions and margin are folded.",
            title="demo",
        )
    )
    with console.status("Starting the embedded PostgreSQL and Kafka-compatible broker..."):
        services = ensure_services(settings)
        upgrade(services.database_url)
    console.print(
        f"[green]✓[/green] PostgreSQL at {services.database_url.split('?')[0]} "
        f"({'embedded' if services.embedded_database else 'configured'}), "
        f"broker at {services.kafka_bootstrap} ({'embedded' if services.embedded_broker else 'configured'})"
    )

    from consumers.kafka_input import ensure_topics
    from consumers.process import run_ledger

    ensure_topics(services.kafka_bootstrap, settings.topic_prefix)
    scenario = Scenario(seed=seed, accounts=accounts, trades=trades, steps=120, crash_at=0.75, options=True)
    # The liquidator's market maker deposits first: it takes the other side of every liquidation.
    kind, key, value = liquidator.deposit_message()
    market = list(generate(scenario))
    messages = [Message(kind, key, value), *market, *BAD_MESSAGES]
    made = sum(1 for message in market if message.kind == "fills") // 2  # two fills a trade
    console.print(
        f"Simulating a market (seed {seed}): {accounts} accounts, {made:,} trades (two fills each), "
        f"a quarter of them in BTC and ETH options (mostly puts written, marked at Black-76 every step), "
        f"marks as a random walk, a 25% crash at the end that hits the put writers, and {len(BAD_MESSAGES)} "
        "malformed messages. "
        f"A liquidator (a simulated exchange) fills the ledger's liquidation orders at their mark against "
        f"{liquidator.MARKET_MAKER}."
    )

    def bar() -> Progress:
        return Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        )

    with bar() as progress:
        task = progress.add_task("publishing to Kafka", total=len(messages))
        ends = publish(
            services.kafka_bootstrap,
            settings.topic_prefix,
            iter(messages),
            progress=lambda n: progress.update(task, completed=n),
        )
        progress.update(task, completed=len(messages))

    engine = make_engine(services.database_url)
    target = _counts_of(ends)
    stop = threading.Event()
    stats_box: dict[str, Any] = {}

    def consumed() -> int:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT topic, partition, next_offset FROM consumer_offsets WHERE shard = 0"))
            stored = {(topic, int(partition)): int(offset) for topic, partition, offset in rows}
        return sum(min(stored.get(key, 0), end) for key, end in ends.items())

    def ledger_thread() -> None:
        stats_box["stats"] = run_ledger(settings, services, stop=stop, install_signal_handlers=False)

    executor = liquidator.Liquidator(services.kafka_bootstrap, settings.topic_prefix)
    executor_thread = threading.Thread(target=executor.run, args=(stop,), name="liquidator", daemon=True)
    thread = threading.Thread(target=ledger_thread, name="ledger", daemon=True)
    started = time.monotonic()
    before = consumed()
    thread.start()
    executor_thread.start()
    with bar() as progress:
        task = progress.add_task("ledger consuming", total=target)
        deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
        done = before
        while done < target and time.monotonic() < deadline and thread.is_alive():
            done = consumed()
            progress.update(task, completed=done)
            stop.wait(0.2)
        progress.update(task, completed=done)
    # Then until the liquidator's fills are in: the ledger has consumed all it produced, and no
    # liquidation order is left open (or the bound passes).
    with console.status("Liquidator filling orders..."):
        while time.monotonic() < deadline and thread.is_alive():
            produced = dict(executor.produced)
            if _liquidations_settled(engine, produced):
                break
            stop.wait(0.2)
    stop.set()
    thread.join(timeout=60)
    executor_thread.join(timeout=60)
    executor.close()
    console.print(
        f"Liquidator: {executor.stats.orders} liquidation orders read, {executor.stats.filled} executed at their mark "
        "(an order the ledger cancelled meanwhile is still booked: an execution is a fact)."
    )
    elapsed = time.monotonic() - started
    if done < target:
        console.print(f"[red]The ledger consumed {done} of {target} messages before giving up.[/red]")
        return 1

    _report(console, engine, elapsed, target - before)
    engine.dispose()
    console.print(
        "\nThe embedded services keep running so you can look around, e.g.\n"
        "  [bold]clearing account show ACC-00001 --json[/bold]\n"
        "and stop with [bold]clearing services stop[/bold]."
    )
    return 0


def _liquidations_settled(engine: sa.Engine, produced: dict[tuple[str, int], int]) -> bool:
    """The ledger stored offsets at or past what the liquidator produced, and holds no order open
    (every issued order has its execution or was cancelled by a resolution)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT topic, partition, next_offset FROM consumer_offsets WHERE shard = 0"))
        stored = {(topic, int(partition)): int(offset) for topic, partition, offset in rows}
        if any(stored.get(key, 0) < end for key, end in produced.items()):
            return False
        issued = set(
            conn.execute(
                sa.text("SELECT payload->>'liquidation_id' FROM events WHERE type = 'LiquidationOrderIssued'")
            ).scalars()
        )
        filled = set(
            conn.execute(
                sa.text("SELECT payload->>'liquidation_id' FROM events WHERE type = 'LiquidationFillRecorded'")
            ).scalars()
        )
        cancelled = set(
            conn.execute(
                sa.text(
                    "SELECT jsonb_array_elements_text(payload->'cancelled_orders') FROM events "
                    "WHERE type = 'MarginCallResolved' AND payload ? 'cancelled_orders'"
                )
            ).scalars()
        )
    return issued <= filled | cancelled


def _report(console: Console, engine: sa.Engine, elapsed: float, consumed: int) -> None:
    with engine.connect() as conn:
        summary = queries.summary(conn)
        chain = verify_chain(conn)
        ledger = Ledger(engine)
    ledger.load()
    imbalance = conservation(ledger.state)

    console.print(
        f"\n[bold]The log[/bold]: {summary['log_position']} events; this run consumed {consumed} messages "
        f"in {elapsed:.1f} s."
    )
    table = Table("event type", "count", "what it is", title="Events in the log")
    for name, count in summary["events_by_type"].items():
        table.add_row(name, str(count), _EXPLAIN.get(name, ""))
    console.print(table)

    _outcomes(console, engine)

    if summary["dead_letters"]:
        dead = Table("count", "why it was rejected", title=f"Dead letters ({summary['dead_letters_total']})")
        for error, count in _dead_letter_reasons(engine):
            dead.add_row(str(count), error)
        console.print(dead)

    _accounts_table(console, engine)
    _system_accounts_table(console, engine)
    console.print(
        ("[green]✓[/green]" if chain.ok else "[red]✗[/red]")
        + f" hash chain: {chain.events} events verified"
        + ("" if chain.ok else f"; first bad position {chain.first_bad_position}: {chain.problem}")
    )
    console.print(
        (
            "[green]✓[/green] books balance: balances + isolated margin + unrealised PnL = deposits - withdrawals, "
            "to the last digit"
        )
        if not imbalance
        else f"[red]✗[/red] books do not balance: {imbalance}"
    )


def _dead_letter_reasons(engine: sa.Engine) -> list[tuple[str, int]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT error, count(*) FROM dead_letters GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 10")
        ).all()
    return [(str(reason), int(count)) for reason, count in rows]


def _outcomes(console: Console, engine: sa.Engine) -> None:
    """How the margin calls ended: resolved (and why), bankrupt, or still open."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT CASE type WHEN 'AccountBankrupted' THEN 'bankrupt: deficit recorded' "
                "ELSE 'resolved: ' || (payload->>'resolution') END AS outcome, count(*) FROM events "
                "WHERE type IN ('MarginCallResolved', 'AccountBankrupted') GROUP BY 1 ORDER BY 2 DESC"
            )
        ).all()
    if not rows:
        return
    table = Table("count", "how the margin call ended", title="Margin calls")
    for outcome, count in rows:
        table.add_row(str(count), outcome)
    console.print(table)


def _accounts_table(console: Console, engine: sa.Engine) -> None:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT b.account_id, b.amount AS usdt, coalesce(m.equity, b.amount) AS equity, m.margin_ratio, "
                "coalesce(m.status, '-') AS status, (SELECT count(*) FROM positions p "
                "WHERE p.account_id = b.account_id AND p.quantity <> 0) AS open_positions "
                "FROM balances b LEFT JOIN margin_state m ON m.account_id = b.account_id AND m.scope = 'cross' "
                "WHERE b.asset = 'USDT' ORDER BY (coalesce(m.status, '-') IN ('healthy', '-')), b.account_id LIMIT 10"
            )
        ).all()
    table = Table(
        "account",
        "USDT balance",
        "equity",
        "margin ratio",
        "status",
        "open positions",
        title="Accounts under margin calls first, then healthy ones (clearing account show ID for one)",
    )
    for row in rows:
        table.add_row(
            row.account_id,
            _money(row.usdt),
            _money(row.equity),
            "-" if row.margin_ratio is None else f"{Decimal(row.margin_ratio):.4f}",
            row.status,
            str(row.open_positions),
        )
    console.print(table)


def _system_accounts_table(console: Console, engine: sa.Engine) -> None:
    """The fees, the insurance fund and the funding pool: each shard keeps its own."""
    table = Table("account", "shard", "USDT", title="System accounts (each shard keeps its own; the total is theirs)")
    with engine.connect() as conn:
        for account_id in SYSTEM_ACCOUNTS:
            view = queries.account_view(conn, account_id)
            if view is None:
                table.add_row(account_id, "all", _money(0))
                continue
            shards = view["shards"]
            for shard, one in shards.items():
                table.add_row(account_id, shard, _money(one["balances"].get("USDT", 0)))
            if len(shards) > 1:
                table.add_row(account_id, "total", _money(view["balances"].get("USDT", 0)))
    console.print(table)


def _money(value: Any) -> str:
    return f"{Decimal(value):,.2f}"


_EXPLAIN = {
    "FillRecorded": "one side of a trade",
    "MarkRecorded": "a mark price of an instrument or collateral asset",
    "CollateralDeposited": "a deposit",
    "WithdrawalRequested": "a withdrawal request (the decision follows it)",
    "WithdrawalApproved": "decision: the account could afford it",
    "WithdrawalRejected": "decision: it could not, with the reason",
    "FundingRateRecorded": "a funding rate, paid between longs and shorts",
    "MarginCallIssued": "decision: an account crossed a margin threshold",
    "MarginCallEscalated": "decision: its margin got worse",
    "MarginCallResolved": "decision: it recovered",
    "LiquidationOrderIssued": "decision: reduce a position",
    "LiquidationFillRecorded": "the liquidator's execution of a liquidation order",
    "InsuranceFundDrawn": "decision: the insurance fund covered a loss beyond equity",
    "AccountBankrupted": "decision: a loss the insurance fund could not cover, recorded as a deficit",
}

