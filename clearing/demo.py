"""``clearing demo``: one command that shows a person what the ledger does.

It starts (or finds) the embedded PostgreSQL and broker, applies the migrations, publishes a
deterministic market with a crash and a few malformed messages, runs the ledger until it has
consumed everything it was sent, and prints what happened: the log, the decisions, the dead
letters, a few accounts, and the checks that the books balance and the hash chain holds.

The market (``demo_scenario``) puts a tenth of the accounts on the portfolio margin model with
option books and scales margin with volatility (``clearing.simulate``: ``portfolio_share``,
``dynamic_margin``). Before the ledger runs, the demo shows what one book of each kind needs
under the standard model and under the portfolio model, from the risk calculator
(``book_margins``); afterwards, from the log, the accounts that switched to the portfolio model
(``MarginModelChanged``), the dynamic-margin multiplier of each underlying before and after the
crash (``MarginRatesChanged``) and the calls and liquidations that followed the first rise.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

import sqlalchemy as sa
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from clearing import liquidator
from clearing.audit.chain import verify_chain
from clearing.domain.fold import conservation
from clearing.domain.params import InstrumentSpec, load_parameters
from clearing.domain.state import SYSTEM_ACCOUNTS
from clearing.embedded import ensure_services
from clearing.engine.ledger import Ledger
from clearing.risk import evaluate_document
from clearing.settings import Settings
from clearing.simulate import BOOKS, Message, Scenario, generate, parameters_document, publish
from clearing.store import queries
from clearing.store.db import make_engine, upgrade

CATCH_UP_TIMEOUT_S = 600.0
# A tenth of the accounts: a book of most kinds, at a run time near the demo's without them (every
# mark of an option re-margins all its holders: its iv moves their grids without bound).
PORTFOLIO_SHARE: Final = 0.1
MODEL_CHANGES_SHOWN_MAX: Final = 5
RATE_CHANGES_SHOWN_MAX: Final = 12


def demo_scenario(*, accounts: int, trades: int, seed: int) -> Scenario:
    """The demo's market: options traded, a tenth of the accounts on the portfolio model with
    option books, dynamic margin sampled every minute of event time, a 25% crash at three
    quarters of the steps."""
    return Scenario(
        seed=seed,
        accounts=accounts,
        trades=trades,
        steps=120,
        crash_at=0.75,
        options=True,
        portfolio_share=PORTFOLIO_SHARE,
        dynamic_margin=True,
    )


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
    scenario = demo_scenario(accounts=accounts, trades=trades, seed=seed)
    # The liquidator's market maker deposits first: it takes the other side of every liquidation.
    kind, key, value = liquidator.deposit_message()
    market = list(generate(scenario))
    messages = [Message(kind, key, value), *market, *BAD_MESSAGES]
    made = sum(1 for message in market if message.kind == "fills") // 2  # two fills a trade
    books = book_margins(scenario, market)
    console.print(
        f"Simulating a market (seed {seed}): {accounts} accounts, {made:,} trades (two fills each), "
        f"a quarter of the random ones in BTC and ETH options (mostly puts written, marked at Black-76 with "
        f"their iv every step), marks as a random walk, a 25% crash at the end that hits the put writers, and "
        f"{len(BAD_MESSAGES)} malformed messages. {len(books.accounts)} accounts ask for the portfolio margin "
        "model and open an option book each with an options dealer (mostly hedged, some naked short options); "
        f"margin scales with volatility (dynamic margin, sampled every {scenario.sample_seconds} s of event time). "
        f"A liquidator (a simulated exchange) fills the ledger's liquidation orders at their mark against "
        f"{liquidator.MARKET_MAKER}."
    )
    _books_table(console, books)

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
    _model_changes(console, engine)
    _rate_changes(console, engine)

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


@dataclass(frozen=True)
class BookMargin:
    """One option book as it was opened, and what it needs under each model."""

    account_id: str
    book: str
    legs: tuple[str, ...]  # "+1 BTCUSDT", "-1 BTC-26MAR27-70000-C"...
    standard_initial: Decimal
    portfolio_initial: Decimal
    worst_cells: tuple[str, ...]  # "BTC -0.16 / up", one per underlying


@dataclass(frozen=True)
class BookMargins:
    accounts: tuple[str, ...]  # every account that asks for the portfolio model
    examples: tuple[BookMargin, ...]  # the first book of each kind, in ``BOOKS`` order


def book_margins(scenario: Scenario, market: Iterable[Message]) -> BookMargins:
    """For the first book of each kind (``simulate.BOOKS``) in ``market``: its positions as opened
    by the account that asked for the portfolio model, valued by the risk calculator at the marks
    (prices and ivs) in force when it was opened, under ``standard`` and under ``portfolio``
    (the run's parameters document, multiplier 1). What the account would need on either model,
    side by side: the hedges offset on the grid and not in the standard per-position rates."""
    parameters = parameters_document(scenario)
    instruments = load_parameters(parameters).instruments_by_symbol
    marks: dict[str, dict[str, str]] = {}
    accounts: list[str] = []
    legs: dict[str, dict[str, Decimal]] = {}
    entry: dict[tuple[str, str], str] = {}
    opened: dict[str, tuple[str, dict[str, dict[str, str]]]] = {}  # account -> (time, marks) of its book
    for message in market:
        value = message.value
        if value["type"] == "mark":
            marks[value["symbol"]] = {"price": value["price"], **({"iv": value["iv"]} if "iv" in value else {})}
        elif value["type"] == "margin_model" and value["model"] == "portfolio":
            accounts.append(value["account_id"])
            legs[value["account_id"]] = {}
        elif value["type"] == "fill" and value["account_id"] in legs:
            # A portfolio account trades only its book, leg after leg with no mark in between.
            account_id, symbol = value["account_id"], value["instrument"]
            book = legs[account_id]
            sign = 1 if value["side"] == "buy" else -1
            book[symbol] = book.get(symbol, Decimal(0)) + sign * Decimal(value["quantity"])
            entry[(account_id, symbol)] = value["price"]
            if account_id not in opened:
                opened[account_id] = (value["occurred_at"], {k: dict(v) for k, v in marks.items()})
    examples: dict[str, BookMargin] = {}
    for account_id in accounts:
        if account_id not in opened:
            continue
        positions = legs[account_id]
        name = _book_name(instruments, positions)
        if name is None or name in examples:
            continue
        at, book_marks = opened[account_id]
        document = {
            "parameters": parameters,
            "marks": book_marks,
            "at": at,
            "account": {
                "balances": {},
                "positions": [
                    {"instrument": symbol, "quantity": str(quantity), "entry_price": entry[(account_id, symbol)]}
                    for symbol, quantity in positions.items()
                ],
            },
        }
        standard = evaluate_document({**document, "margin_model": "standard"})
        portfolio = evaluate_document({**document, "margin_model": "portfolio"})
        examples[name] = BookMargin(
            account_id=account_id,
            book=name,
            legs=tuple(f"{quantity:+} {symbol}" for symbol, quantity in positions.items()),
            standard_initial=Decimal(standard["initial_margin"]),
            portfolio_initial=Decimal(portfolio["initial_margin"]),
            worst_cells=tuple(
                f"{u['underlying']} {u['worst_cell']['move']} / {u['worst_cell']['volatility']}"
                + (" (extreme)" if u["worst_cell"].get("extreme") else "")
                for u in portfolio["underlyings"]
            ),
        )
    return BookMargins(tuple(accounts), tuple(examples[name] for name in BOOKS if name in examples))


def _book_name(instruments: dict[str, InstrumentSpec], positions: dict[str, Decimal]) -> str | None:
    """Which of ``simulate.BOOKS`` a book's positions are, by the side of each leg and what it is
    (the perpetual, a put or a call); None for none of them."""
    shape = sorted(
        (
            "buy" if quantity > 0 else "sell",
            "perpetual" if instruments[symbol].kind != "option" else str(instruments[symbol].option_type),
        )
        for symbol, quantity in positions.items()
    )
    for name, book_legs in BOOKS.items():
        if sorted((side, what.split()[-1]) for side, what in book_legs) == shape:
            return name
    return None


def _books_table(console: Console, books: BookMargins) -> None:
    if not books.examples:
        return
    table = Table(
        "book",
        "account",
        "positions",
        "IM standard",
        "IM portfolio",
        "portfolio / standard",
        "worst cell (move / vol)",
        title="Initial margin of an option book under the standard and the portfolio model "
        "(risk calculator, at the marks when the book was opened)",
    )
    for example in books.examples:
        ratio = f"{example.portfolio_initial / example.standard_initial:.0%}" if example.standard_initial > 0 else "-"
        table.add_row(
            example.book,
            example.account_id,
            "\n".join(example.legs),
            _money(example.standard_initial),
            _money(example.portfolio_initial),
            ratio,
            "\n".join(example.worst_cells),
        )
    console.print(table)
    console.print(
        "The standard model adds up per-position rates: a short option pays its full rate even where a long "
        "perpetual or option covers it. The portfolio model revalues the whole book on a grid of price moves and "
        "volatility shifts and takes the worst loss, so covered calls, collars and spreads offset. A long "
        "perpetual with a long put can need more on the grid: the standard model asks a tier rate of the "
        "perpetual's notional (0.8% at the first tier) and nothing of a long option, the grid the loss of a 16% "
        "move down to the put's strike. At the document's rates (multiplier 1): the ledger scales both by the "
        "dynamic-margin multiplier."
    )


def _model_changes(console: Console, engine: sa.Engine) -> None:
    """The accounts that switched margin model (``MarginModelChanged``) and the refusals."""
    with engine.connect() as conn:
        counts: dict[str, int] = dict(
            conn.execute(
                sa.text(
                    "SELECT type, count(*) FROM events WHERE type IN ('MarginModelChanged', 'MarginModelRejected') "
                    "GROUP BY 1"
                )
            ).all()
        )
        rows = (
            conn.execute(
                sa.text("SELECT payload FROM events WHERE type = 'MarginModelChanged' ORDER BY position LIMIT :limit"),
                {"limit": MODEL_CHANGES_SHOWN_MAX},
            )
            .scalars()
            .all()
        )
    changed, rejected = int(counts.get("MarginModelChanged", 0)), int(counts.get("MarginModelRejected", 0))
    if not changed and not rejected:
        return
    table = Table(
        "account",
        "from",
        "to",
        "equity",
        "initial margin (new model)",
        title=f"Margin model changes: {changed} approved, {rejected} rejected (first {len(rows)} shown)",
    )
    for payload in rows:
        table.add_row(
            payload["account_id"],
            payload.get("previous_model", "-"),
            payload.get("model", "-"),
            _money(payload.get("equity", 0)),
            _money(payload.get("initial_margin", 0)),
        )
    console.print(table)


def _rate_changes(console: Console, engine: sa.Engine) -> None:
    """Dynamic margin: each underlying's multiplier at its first sample and at its highest, the
    samples where it moved, the calls and liquidation orders decided from the first rise on (and
    how many in the very step of a rise), and a call on a portfolio account."""
    with engine.connect() as conn:
        samples = conn.execute(
            sa.text("SELECT position, payload FROM events WHERE type = 'MarginRatesChanged' ORDER BY position")
        ).all()
        if not samples:
            return
        first_rise = next(
            (
                row.position
                for row in samples
                if Decimal(row.payload["multiplier"]) > Decimal(row.payload.get("previous_multiplier") or 1)
                and int(row.payload.get("index", 0)) > 0
            ),
            None,
        )
        after: dict[str, int] = (
            dict(
                conn.execute(
                    sa.text(
                        "SELECT type, count(*) FROM events WHERE position > :p AND type IN "
                        "('MarginCallIssued', 'MarginCallEscalated', 'LiquidationOrderIssued') GROUP BY 1"
                    ),
                    {"p": first_rise},
                ).all()
            )
            if first_rise is not None
            else {}
        )
        # The samples an event causes come before its other decisions, which are then taken under the
        # new rates: the calls and orders after a rise in the same step are the rise's at once.
        at_once = conn.execute(
            sa.text(
                "SELECT count(*) FROM events d JOIN events r ON r.cause_position = d.cause_position "
                "AND r.shard = d.shard AND r.position < d.position WHERE r.type = 'MarginRatesChanged' "
                "AND (r.payload->>'multiplier')::numeric > (r.payload->>'previous_multiplier')::numeric "
                "AND d.type IN ('MarginCallIssued', 'MarginCallEscalated', 'LiquidationOrderIssued')"
            )
        ).scalar_one()
    per_underlying: dict[str, list[dict[str, Any]]] = {}
    for row in samples:
        per_underlying.setdefault(row.payload["underlying"], []).append(row.payload)
    summary = Table(
        "underlying",
        "samples",
        "multiplier at the first sample",
        "lowest before its highest",
        "highest",
        "volatility at the highest",
        title="Dynamic margin: the multiplier on each underlying's rates (MarginRatesChanged decisions)",
    )
    for underlying, payloads in sorted(per_underlying.items()):
        multipliers = [Decimal(p["multiplier"]) for p in payloads]
        top = max(range(len(payloads)), key=lambda i: multipliers[i])
        summary.add_row(
            underlying,
            str(len(payloads)),
            f"{multipliers[0]:.4f}",
            f"{min(multipliers[: top + 1]):.4f}",
            f"{multipliers[top]:.4f}",
            f"{Decimal(payloads[top]['volatility']):.6f}",
        )
    console.print(summary)
    moved = [p for p in (row.payload for row in samples) if p["multiplier"] != p.get("previous_multiplier")]
    moved = [p for p in moved if int(p.get("index", 0)) > 0]
    if moved:
        changes = Table(
            "sample at",
            "underlying",
            "volatility",
            "multiplier before",
            "after",
            title=f"Samples where a multiplier moved (first {min(len(moved), RATE_CHANGES_SHOWN_MAX)} of {len(moved)})",
        )
        for payload in moved[:RATE_CHANGES_SHOWN_MAX]:
            changes.add_row(
                payload["sample_at"],
                payload["underlying"],
                f"{Decimal(payload['volatility']):.6f}",
                f"{Decimal(payload.get('previous_multiplier') or 1):.4f}",
                f"{Decimal(payload['multiplier']):.4f}",
            )
        console.print(changes)
    if first_rise is not None:
        console.print(
            f"From the first rise of a multiplier (log position {first_rise}) on: "
            f"{int(after.get('MarginCallIssued', 0))} margin calls issued, "
            f"{int(after.get('MarginCallEscalated', 0))} escalated, "
            f"{int(after.get('LiquidationOrderIssued', 0))} liquidation orders. "
            f"{at_once} calls and orders were decided in the very step of a rise, under the new rates (the "
            "samples an event causes are taken before its other decisions)."
        )
        _portfolio_call(console, engine, first_rise)


def _portfolio_call(console: Console, engine: sa.Engine, after: int) -> None:
    """The first margin call on a portfolio account from log position ``after`` on, with the worst
    cell of its grid (``worst_cells``, on decisions taken under the portfolio model)."""
    with engine.connect() as conn:
        # Every decision taken under the portfolio model names its worst cells; no other does.
        row = conn.execute(
            sa.text(
                "SELECT payload FROM events WHERE position > :after "
                "AND type IN ('MarginCallIssued', 'MarginCallEscalated') AND payload ? 'worst_cells' "
                "ORDER BY position LIMIT 1"
            ),
            {"after": after},
        ).scalar_one_or_none()
    if row is None:
        return
    cells = "; ".join(
        f"{cell['underlying']} move {cell['move']}, volatility {cell['volatility']}"
        + (" (extreme)" if cell.get("extreme") else "")
        for cell in row["worst_cells"]
    )
    console.print(
        f"A call on a portfolio account: {row['margin_call_id']} on {row['account_id']}, level {row['level']}, "
        f"equity {_money(row['equity'])} against maintenance {_money(row['maintenance_margin'])}"
        + f"; worst cell {cells}"
        + f". [bold]clearing audit explain {row['margin_call_id']}[/bold] shows its grid and arithmetic."
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
    "RiskParametersChanged": "a risk parameters document taking effect",
    "MarginModelRequested": "a request to change an account's margin model (the decision follows it)",
    "MarginModelChanged": "decision: the account moved to the model it asked for",
    "MarginModelRejected": "decision: it could not, with the reason",
    "MarginRatesChanged": "decision: a dynamic-margin sample (volatility and the multiplier on rates)",
}
