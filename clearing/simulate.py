"""A deterministic synthetic market (``clearing simulate``): accounts, deposits, paired fills on
both sides of each trade, marks as a random walk, funding, withdrawals and an optional crash.

With ``options`` (``clearing simulate --options``), a quarter of the trades are trades of the
bundled BTC and ETH options: a writer sells a put (most often) or a call to a buyer at the
option's mark, and every step marks each option at Black-76 of its underlying's price (iv 0.6,
0.9 during the crash, when the put writers are the ones called). Without it the messages are
those of earlier versions, byte for byte.

With ``portfolio_share`` (``--portfolio-share 0.2``), that share of the accounts asks for the
portfolio margin model (a ``margin_model`` request on the transfers topic right after its
deposits) and holds an option book instead of trading at random: most books hedged (a covered
call, a protective put or a collar on the perpetual, a call or a put spread), some a naked short
put or call (``BOOKS``). Each book is opened in the first half of the steps before the crash,
leg by leg, against an options dealer (``DEALER``, an account on the standard model with a deposit
deep enough to carry the other side of every book: one account to re-margin on every option mark,
not one per leg); the options are then marked every step, with their iv. The books' legs come on
top of ``trades``. With ``dynamic_margin`` (``--dynamic-margin``) the steps are spaced in event
time so that a ``sample_seconds`` boundary is crossed every ``STEPS_PER_SAMPLE`` steps, and the
crash spans several samples. Either flag opens the run with a ``risk_parameters`` document
(``parameters_document``): the bundled one (which has the ``portfolio_margin`` blocks of the
option underlyings) and, with ``dynamic_margin``, ``dynamic_margin`` blocks for every underlying. The
choices of those flags come from a second generator (``random.Random`` seeded from the seed and a
name), so the draws of the rest of the market are the ones the run would make without them.

The same seed and options give the same messages byte for byte. The generator is not in the
ledger path; it uses ``random.Random(seed)`` and builds every number as an exact decimal string.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from typing import Any, Final

from clearing.domain.black76 import option_value
from clearing.domain.inputs import format_time
from clearing.domain.numbers import to_wire
from clearing.domain.params import InstrumentSpec, bundled_document, bundled_parameters

START = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
INSTRUMENTS = {
    # symbol: (start price, price tick, quantity step, asset priced the same way)
    "BTCUSDT": (Decimal("65000"), Decimal("0.1"), Decimal("0.001"), "BTC"),
    "ETHUSDT": (Decimal("3200"), Decimal("0.01"), Decimal("0.01"), "ETH"),
    "SOLUSDT": (Decimal("150"), Decimal("0.001"), Decimal("0.1"), "SOL"),
}


@dataclass(frozen=True)
class Scenario:
    seed: int = 7
    accounts: int = 50
    trades: int = 2_000
    steps: int = 200
    crash_at: float | None = None  # fraction of the steps after which the crash starts
    crash_depth: Decimal = Decimal("0.25")  # fraction the price falls
    crash_steps: int = 10
    leverage_max: int = 20  # the most leveraged habit a simulated trader has
    withdrawals: bool = True
    funding_every_steps: int = 50
    options: bool = False  # trade the bundled options too (module docstring)
    portfolio_share: float = 0.0  # share of the accounts on the portfolio model with option books
    dynamic_margin: bool = False  # open with a document that scales margin with volatility
    sample_seconds: int = 60  # dynamic margin's sample period (the document's sample_seconds)
    # A run into a ledger that holds another run's events gets ids of its own and later times
    # (``next_run``): the same ids would be conflicting duplicates, earlier marks stale.
    id_prefix: str = ""
    start: datetime = START


OPTION_SHARE_OF_TRADES: Final = 4  # with options, one trade in this many is an option trade
OPTION_IV: Final = Decimal("0.6")
OPTION_CRASH_IV: Final = Decimal("0.9")
OPTION_PRICE_TICK: Final = Decimal("0.01")
OPTION_QUANTITY_STEP: Final = Decimal("0.01")
OPTION_WRITER_RATE: Final = Decimal("0.15")  # the writer sizes its trade against initial_rate x U + mark


# Dynamic margin of every underlying. The reference is about what a 0.2% random walk does over
# ``STEPS_PER_SAMPLE`` steps plus a margin: the multiplier sits at (1 + release_buffer) x the floor
# in the quiet market and reaches the cap within a few samples of the crash.
DYNAMIC_MARGIN: Final = {
    "lambda": "0.94",
    "initial_volatility": "0.01",
    "reference_volatility": "0.01",
    "multiplier_floor": "1",
    "multiplier_cap": "3",
    "release_buffer": "0.25",
}
STEPS_PER_SAMPLE: Final = 3  # with dynamic margin, a step lasts at least sample_seconds / this in event time

# The option books of portfolio accounts, with how often each is chosen. Legs name the account's
# side and what it trades: the perpetual on the underlying, or an option of the nearest expiry at
# the strike just below the underlying's start price ("low"), just above it ("high") or the
# highest listed ("far").
BOOKS: Final[dict[str, tuple[tuple[str, str], ...]]] = {
    "covered call": (("buy", "perpetual"), ("sell", "high call")),
    "protective put": (("buy", "perpetual"), ("buy", "low put")),
    "collar": (("buy", "perpetual"), ("buy", "low put"), ("sell", "far call")),
    "call spread": (("buy", "low call"), ("sell", "high call")),
    "put spread": (("buy", "high put"), ("sell", "low put")),
    "naked put": (("sell", "low put"),),
    "naked call": (("sell", "far call"),),
}
BOOK_WEIGHTS: Final = {
    "covered call": 2,
    "protective put": 1,
    "collar": 2,
    "call spread": 1,
    "put spread": 1,
    "naked put": 2,
    "naked call": 1,
}
NAKED_BOOKS: Final = frozenset({"naked put", "naked call"})
# The notional of a book (quantity x the underlying's price) per unit of the account's deposit:
# hedged books up to 3 times it, naked ones up to 1.5 times.
HEDGED_NOTIONAL_PER_EQUITY: Final = (Decimal(1), Decimal("1.5"), Decimal(2), Decimal(3))
NAKED_NOTIONAL_PER_EQUITY: Final = (Decimal("0.5"), Decimal(1), Decimal("1.5"))
STANDARD_ACCOUNTS_MIN: Final = 2  # random trades need two
DEALER: Final = "OPTIONS-DEALER"  # the books' counterparty (prefixed by the run's id prefix)
DEALER_DEPOSIT: Final = Decimal(100_000_000)


def parameters_document(scenario: Scenario) -> dict[str, Any]:
    """The risk parameters a run with ``portfolio_share`` or ``dynamic_margin`` opens with: the
    bundled document (its ``portfolio_margin`` blocks are the grids of the option underlyings)
    and, with ``dynamic_margin``, a ``dynamic_margin`` block (``DYNAMIC_MARGIN``, the scenario's
    ``sample_seconds``) per underlying; its version names the run and the seed."""
    document = bundled_document()
    instruments = bundled_parameters().instruments
    document["version"] = f"{scenario.id_prefix}simulate-{scenario.seed}"
    if scenario.dynamic_margin:
        underlyings = sorted({spec.underlying_symbol for spec in instruments})
        document["dynamic_margin"] = [
            {"underlying": name, "sample_seconds": scenario.sample_seconds, **DYNAMIC_MARGIN} for name in underlyings
        ]
    return document


def portfolio_accounts(scenario: Scenario, accounts: list[str]) -> list[str]:
    """The accounts of the run that go on the portfolio model (``portfolio_share`` of them,
    rounded, leaving at least ``STANDARD_ACCOUNTS_MIN`` on the standard one), drawn from their
    own generator."""
    if not 0 <= scenario.portfolio_share <= 1:
        raise ValueError(f"portfolio_share must be between 0 and 1, got {scenario.portfolio_share}")
    wanted = min(round(scenario.portfolio_share * len(accounts)), len(accounts) - STANDARD_ACCOUNTS_MIN)
    if wanted <= 0:
        return []
    return sorted(random.Random(f"portfolio:{scenario.seed}").sample(accounts, wanted))


def _book_symbols(chain: list[InstrumentSpec], underlying: str, start_price: Decimal) -> dict[str, str]:
    """What a book's legs name ("low put", "high call"...) as symbols on ``underlying``: options of
    the nearest expiry in ``chain``."""
    on = [spec for spec in chain if spec.underlying_symbol == underlying and spec.expiry is not None]
    nearest = min(spec.expiry for spec in on if spec.expiry is not None)
    strikes = sorted({spec.strike for spec in on if spec.expiry == nearest and spec.strike is not None})
    low = max((k for k in strikes if k < start_price), default=strikes[0])
    high = min((k for k in strikes if k > start_price), default=strikes[-1])
    by = {(spec.option_type, spec.strike): spec.symbol for spec in on if spec.expiry == nearest}
    return {
        "low put": by[("put", low)],
        "high put": by[("put", high)],
        "low call": by[("call", low)],
        "high call": by[("call", high)],
        "far call": by[("call", strikes[-1])],
    }


def _options(at: datetime) -> list[InstrumentSpec]:
    """The bundled options whose underlying the simulation marks, unexpired at ``at``."""
    assets = {spec[3] for spec in INSTRUMENTS.values()}
    return [
        spec
        for spec in bundled_parameters().instruments
        if spec.kind == "option" and spec.underlying in assets and spec.expiry is not None and spec.expiry > at
    ]


def _option_mark(spec: InstrumentSpec, underlying: Decimal, iv: Decimal, at: datetime) -> Decimal:
    value = option_value(spec, underlying, iv, at, Decimal(0))
    return max(OPTION_PRICE_TICK, _q(value, OPTION_PRICE_TICK))


@dataclass(frozen=True)
class Message:
    kind: str  # input topic kind: fills, transfers, marks, liquidations, admin
    key: str
    value: dict[str, Any]

    def encode(self) -> bytes:
        return json.dumps(self.value, separators=(",", ":")).encode("utf-8")


def _q(value: Decimal, step: Decimal) -> Decimal:
    return (value / step).to_integral_value(rounding=ROUND_DOWN) * step


def generate(scenario: Scenario) -> Iterator[Message]:
    """The scenario's messages in the order they should be published."""
    rng = random.Random(scenario.seed)
    run = scenario.id_prefix
    accounts = [f"{run}ACC-{i:05d}" for i in range(1, scenario.accounts + 1)]
    clock = scenario.start
    prices = {symbol: spec[0] for symbol, spec in INSTRUMENTS.items()}
    equity: dict[str, Decimal] = {}
    habits = [lev for lev in (2, 3, 3, 5, 5, 5, 8, 10, 10, 15, 20, 25) if lev <= scenario.leverage_max] or [1]
    leverage = {account: Decimal(rng.choice(habits)) for account in accounts}
    held: dict[str, dict[str, Decimal]] = {account: {} for account in accounts}
    on_portfolio = portfolio_accounts(scenario, accounts)
    # Random trades are between accounts on the standard model: a portfolio account holds its book.
    standard = [account for account in accounts if account not in set(on_portfolio)] if on_portfolio else accounts
    options = _options(scenario.start) if scenario.options or on_portfolio else []
    asset_price = {spec[3]: symbol for symbol, spec in INSTRUMENTS.items()}  # asset -> the instrument priced alike
    option_marks: dict[str, Decimal] = {}
    iv = OPTION_IV

    def tick() -> str:
        nonlocal clock
        clock += timedelta(milliseconds=rng.randint(5, 500))
        return format_time(clock)

    # The portfolio accounts' draws (their books, sizes, times) come from a
    # generator of their own: the rest of the market draws what it would draw without them.
    prng = random.Random(f"books:{scenario.seed}")

    def book_tick() -> str:
        nonlocal clock
        clock += timedelta(milliseconds=prng.randint(5, 50))
        return format_time(clock)

    def marks() -> Iterator[Message]:
        at = tick()
        for symbol, (_, price_tick, _, asset) in INSTRUMENTS.items():
            price = _q(prices[symbol], price_tick)
            yield Message(
                "marks", symbol, {"type": "mark", "symbol": symbol, "price": to_wire(price), "occurred_at": at}
            )
            yield Message("marks", asset, {"type": "mark", "symbol": asset, "price": to_wire(price), "occurred_at": at})
        for spec in options:
            underlying = _q(
                prices[asset_price[spec.underlying_symbol]], INSTRUMENTS[asset_price[spec.underlying_symbol]][1]
            )
            mark = option_marks[spec.symbol] = _option_mark(spec, underlying, iv, clock)
            yield Message(
                "marks",
                spec.symbol,
                {"type": "mark", "symbol": spec.symbol, "price": to_wire(mark), "iv": to_wire(iv), "occurred_at": at},
            )

    def book_trades(account: str, number: int) -> Iterator[Message]:
        """``account`` opens its book (``BOOKS``), one trade per leg against the dealer, the
        perpetual at its price and each option at its mark."""
        name = prng.choices(list(BOOK_WEIGHTS), weights=list(BOOK_WEIGHTS.values()))[0]
        perpetual = prng.choice(book_perpetuals)
        asset = INSTRUMENTS[perpetual][3]
        underlying = prices[perpetual]
        per_equity = prng.choice(NAKED_NOTIONAL_PER_EQUITY if name in NAKED_BOOKS else HEDGED_NOTIONAL_PER_EQUITY)
        quantity = max(_q(equity[account] * per_equity / underlying, OPTION_QUANTITY_STEP), OPTION_QUANTITY_STEP)
        for leg, (side, what) in enumerate(BOOKS[name], 1):
            if what == "perpetual":
                symbol, price = perpetual, _q(underlying, INSTRUMENTS[perpetual][1])
            else:
                symbol = book_symbols[asset][what]
                price = option_marks[symbol]
            at = book_tick()
            other = "sell" if side == "buy" else "buy"
            for account_side, owner in ((side, account), (other, dealer)):
                fee = (quantity * price * Decimal("0.0003")).quantize(Decimal("0.00000001"))
                yield Message(
                    "fills",
                    owner,
                    {
                        "type": "fill",
                        "fill_id": f"{run}PF-{number:05d}-{leg}-{account_side[0]}",
                        "trade_id": f"{run}PT-{number:05d}-{leg}",
                        "account_id": owner,
                        "instrument": symbol,
                        "side": account_side,
                        "quantity": to_wire(quantity),
                        "price": to_wire(price),
                        "fee": to_wire(fee),
                        "fee_asset": "USDT",
                        "margin_mode": "cross",
                        "occurred_at": at,
                    },
                )

    def option_trade(number: int) -> Iterator[Message]:
        """A writer sells a put (three times in four) or a call to a buyer at the option's mark,
        sized against a tenth to a half of its equity per initial_rate x U + mark a contract."""
        writer, buyer = rng.sample(standard, 2)
        puts = [spec for spec in options if spec.option_type == "put"]
        calls = [spec for spec in options if spec.option_type == "call"]
        spec = rng.choice(puts if rng.random() < 0.75 else calls)
        price = option_marks[spec.symbol]
        underlying = prices[asset_price[spec.underlying_symbol]]
        quantity = _q(
            equity[writer] * rng.randint(1, 5) / 10 / (OPTION_WRITER_RATE * underlying + price), OPTION_QUANTITY_STEP
        )
        quantity = max(quantity, OPTION_QUANTITY_STEP)
        at = tick()
        for side, account in (("buy", buyer), ("sell", writer)):
            fee = (quantity * price * Decimal("0.0003")).quantize(Decimal("0.00000001"))
            yield Message(
                "fills",
                account,
                {
                    "type": "fill",
                    "fill_id": f"{run}F-{number:07d}-{side[0]}",
                    "trade_id": f"{run}T-{number:07d}",
                    "account_id": account,
                    "instrument": spec.symbol,
                    "side": side,
                    "quantity": to_wire(quantity),
                    "price": to_wire(price),
                    "fee": to_wire(fee),
                    "fee_asset": "USDT",
                    "margin_mode": "cross",
                    "occurred_at": at,
                },
            )

    if on_portfolio or scenario.dynamic_margin:
        # Before any mark: the grids and the sampling are in force for the whole market.
        yield Message(
            "admin",
            f"{run}simulate-{scenario.seed}",
            {"type": "risk_parameters", "parameters": parameters_document(scenario), "occurred_at": format_time(clock)},
        )
    yield from marks()
    dealer = f"{run}{DEALER}"
    if on_portfolio:
        yield Message(
            "transfers",
            dealer,
            {
                "type": "deposit",
                "transfer_id": f"{run}D-{DEALER}",
                "account_id": dealer,
                "asset": "USDT",
                "amount": to_wire(DEALER_DEPOSIT),
                "occurred_at": book_tick(),
            },
        )
    for account in accounts:
        amount = Decimal(rng.randint(2_000, 100_000))
        equity[account] = amount
        yield Message(
            "transfers",
            account,
            {
                "type": "deposit",
                "transfer_id": f"{run}D-{account}",
                "account_id": account,
                "asset": "USDT",
                "amount": to_wire(amount),
                "occurred_at": tick(),
            },
        )
        if rng.random() < 0.2:
            btc = Decimal(rng.randint(1, 300)) / 100
            yield Message(
                "transfers",
                account,
                {
                    "type": "deposit",
                    "transfer_id": f"{run}DB-{account}",
                    "account_id": account,
                    "asset": "BTC",
                    "amount": to_wire(btc),
                    "occurred_at": tick(),
                },
            )
        if account in on_portfolio:
            yield Message(
                "transfers",
                account,
                {
                    "type": "margin_model",
                    "request_id": f"{run}PM-{account}",
                    "account_id": account,
                    "model": "portfolio",
                    "occurred_at": book_tick(),
                },
            )

    steps = max(1, scenario.steps)
    crash_start = int(scenario.steps * scenario.crash_at) if scenario.crash_at is not None else None
    trade_number = 0
    book_perpetuals = [
        symbol for symbol, spec in INSTRUMENTS.items() if spec[3] in {o.underlying_symbol for o in options}
    ]
    book_symbols = {
        INSTRUMENTS[symbol][3]: _book_symbols(options, INSTRUMENTS[symbol][3], INSTRUMENTS[symbol][0])
        for symbol in book_perpetuals
    }
    # The books open one account after another over the first half of the quiet steps.
    opening_steps = max(1, (crash_start if crash_start is not None else scenario.steps) // 2)
    opens_at: dict[int, list[str]] = {}
    for index, account in enumerate(on_portfolio):
        opens_at.setdefault(index * opening_steps // len(on_portfolio), []).append(account)
    book_number = 0
    step_seconds = timedelta(seconds=scenario.sample_seconds / STEPS_PER_SAMPLE)
    for step in range(scenario.steps):
        if scenario.dynamic_margin:
            clock = max(clock, scenario.start + (step + 1) * step_seconds)
        # Marks: a random walk of about 0.2% a step; during a crash, an even fall each step.
        if options:
            crashing = crash_start is not None and crash_start <= step < crash_start + scenario.crash_steps
            iv = OPTION_CRASH_IV if crashing else OPTION_IV
        for symbol in prices:
            if crash_start is not None and crash_start <= step < crash_start + scenario.crash_steps:
                fall = scenario.crash_depth / scenario.crash_steps
                prices[symbol] = prices[symbol] * (1 - fall)
            else:
                move = Decimal(rng.randint(-20, 20)) / 10_000
                prices[symbol] = prices[symbol] * (1 + move)
        yield from marks()
        for account in opens_at.get(step, ()):
            book_number += 1
            yield from book_trades(account, book_number)
        if scenario.funding_every_steps and step and step % scenario.funding_every_steps == 0:
            at = tick()
            for symbol in INSTRUMENTS:
                rate = Decimal(rng.randint(-10, 30)) / 100_000
                yield Message(
                    "marks", symbol, {"type": "funding", "symbol": symbol, "rate": to_wire(rate), "occurred_at": at}
                )
        # Exactly ``trades`` trades, spread evenly: this step's share of the running total.
        for _ in range(scenario.trades * (step + 1) // steps - scenario.trades * step // steps):
            trade_number += 1
            if scenario.options and rng.randrange(OPTION_SHARE_OF_TRADES) == 0:
                yield from option_trade(trade_number)
                continue
            buyer, seller = rng.sample(standard, 2)
            symbol = rng.choice(list(INSTRUMENTS))
            _, price_tick, quantity_step, _ = INSTRUMENTS[symbol]
            price = _q(prices[symbol] * (1 + Decimal(rng.randint(-5, 5)) / 10_000), price_tick)
            # A trade of up to the smaller equity, kept within both accounts' leverage (gross
            # notional at current prices over the deposit): traders with a leverage habit, not
            # gamblers that a random walk wipes out.
            budget = min(equity[buyer], equity[seller]) * rng.randint(1, 10) / 10
            for account, sign in ((buyer, 1), (seller, -1)):
                room = equity[account] * leverage[account] - sum(
                    abs(held[account].get(s, Decimal(0)) + (sign * budget / price if s == symbol else 0)) * prices[s]
                    for s in INSTRUMENTS
                )
                if room < 0:
                    budget = max(Decimal(0), budget + room)
            quantity = _q(budget / price, quantity_step)
            if quantity <= 0:
                quantity = quantity_step
            held[buyer][symbol] = held[buyer].get(symbol, Decimal(0)) + quantity
            held[seller][symbol] = held[seller].get(symbol, Decimal(0)) - quantity
            at = tick()
            trade_id = f"{run}T-{trade_number:07d}"
            maker_buys = rng.random() < 0.5
            for side, account in (("buy", buyer), ("sell", seller)):
                maker = (side == "buy") == maker_buys
                fee_rate = Decimal("0.0002") if maker else Decimal("0.0005")
                fee = (quantity * price * fee_rate).quantize(Decimal("0.00000001"))
                yield Message(
                    "fills",
                    account,
                    {
                        "type": "fill",
                        "fill_id": f"{run}F-{trade_number:07d}-{side[0]}",
                        "trade_id": trade_id,
                        "account_id": account,
                        "instrument": symbol,
                        "side": side,
                        "quantity": to_wire(quantity),
                        "price": to_wire(price),
                        "fee": to_wire(fee),
                        "fee_asset": "USDT",
                        "liquidity": "maker" if maker else "taker",
                        "margin_mode": "cross",
                        "occurred_at": at,
                    },
                )
        if scenario.withdrawals and rng.random() < 0.1:
            account = rng.choice(accounts)
            amount = Decimal(rng.randint(100, 5_000))
            yield Message(
                "transfers",
                account,
                {
                    "type": "withdrawal",
                    "transfer_id": f"{run}W-{step:05d}-{account}",
                    "account_id": account,
                    "asset": "USDT",
                    "amount": to_wire(amount),
                    "occurred_at": tick(),
                },
            )


RUN_START_ROUNDING = timedelta(hours=1)  # a later run starts on the next whole hour after the last event


@dataclass(frozen=True)
class RunPlan:
    """Where a simulation run's ids and times start, and why."""

    id_prefix: str
    start: datetime
    reason: str


def next_run(used_until: datetime | None) -> RunPlan:
    """The ids and times of a run into a ledger whose latest event (or published message) happened
    at ``used_until`` (None: an unused ledger and broker). An unused one gets the plain ids the demo
    uses, from ``START``; a used one gets ids prefixed with the run's start (``S20261123T0100-``,
    accounts ``S20261123T0100-ACC-00001``...) and times from the next whole hour after the last one,
    so no id is a duplicate and no mark is stale."""
    if used_until is None:
        return RunPlan("", START, "the ledger and the broker hold no events yet")
    hours = int((used_until - START) / RUN_START_ROUNDING) + 1
    start = max(START, START + hours * RUN_START_ROUNDING)
    return RunPlan(
        f"S{start:%Y%m%dT%H%M}-",
        start,
        f"the ledger or the broker already holds events up to {format_time(used_until)}",
    )


def latest_published(bootstrap: str, prefix: str) -> datetime | None:
    """The latest ``occurred_at`` of the last message in each partition of the marks topic: marks
    are published in time order, so this is when the market published so far ends (None: none)."""
    from kafka import KafkaConsumer, TopicPartition

    topic = prefix + "marks"
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=2_000)
    latest: datetime | None = None
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            return None
        ends = consumer.end_offsets(partitions)
        wanted = [tp for tp in partitions if ends[tp] > 0]
        if not wanted:
            return None
        consumer.assign(wanted)
        for tp in wanted:
            consumer.seek(tp, ends[tp] - 1)
        remaining = set(wanted)
        for record in consumer:
            remaining.discard(TopicPartition(record.topic, record.partition))
            try:
                text = json.loads(record.value).get("occurred_at")
                moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
            except (ValueError, AttributeError, TypeError):
                moment = None
            if moment is not None and moment.tzinfo is not None and (latest is None or moment > latest):
                latest = moment
            if not remaining:
                break
    finally:
        consumer.close()
    return latest


def publish(
    bootstrap: str, prefix: str, messages: Iterator[Message], progress: Any = None
) -> dict[tuple[str, int], int]:
    """Publish to the input topics; returns the next offset per (topic, partition) written,
    which is what a ledger must have stored to have consumed everything."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=10, batch_size=256 * 1024)
    futures = []
    try:
        for count, message in enumerate(messages, 1):
            futures.append(producer.send(prefix + message.kind, key=message.key.encode(), value=message.encode()))
            if progress is not None and count % 1_000 == 0:
                progress(count)
        producer.flush()
    finally:
        producer.close()
    ends: dict[tuple[str, int], int] = {}
    for future in futures:
        metadata = future.get(timeout=30)
        key = (metadata.topic, metadata.partition)
        ends[key] = max(ends.get(key, 0), metadata.offset + 1)
    return ends
