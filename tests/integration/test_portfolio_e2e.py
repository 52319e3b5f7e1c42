"""Issue 24 end to end on the embedded services: accounts ask for the portfolio margin model (three
are approved with nothing open, one holding a lone perpetual is refused: the grid asks more than
its equity), hold option books (a covered call, a put spread, a naked short put) on the portfolio
model; the underlying crashes through several dynamic-margin sample boundaries with the options'
iv rising, so the multiplier on BTC's rates rises; the covered call and the naked put are called
and liquidated (the liquidator fills the orders at the mark), the put spread, whose loss is
bounded by its strikes, is not; ``audit verify`` passes and ``audit explain`` of a portfolio call
names the worst cell of its grid. Nothing sleeps: every wait polls a bound."""

from __future__ import annotations

import importlib.util
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from clearing.audit.explain import explain, render
from clearing.audit.verify import verify
from clearing.domain import decisions
from clearing.domain import events as ev
from clearing.domain.black76 import option_value
from clearing.domain.fold import conservation
from clearing.domain.params import bundled_document, load_parameters
from clearing.engine.ledger import Ledger
from clearing.liquidator import MARKET_MAKER, Liquidator
from clearing.simulate import STEPS_PER_SAMPLE, Scenario, generate
from tests.integration.conftest import InProcessLedger, consume_topic, merge_ends, produce
from tests.integration.test_margin_e2e import _caught_up, _log, _settle

pytestmark = [pytest.mark.integration]

# What later branches of issue 24 bring (see the end of the first test).
WORST_CELLS_ON_DECISIONS = hasattr(decisions, "WorstCell")  # branch liquidate
GRID_IN_EXPLAIN = importlib.util.find_spec("clearing.audit.grid") is not None  # branch views

D = Decimal
START = datetime(2026, 12, 1, tzinfo=UTC)  # a multiple of the sample period: boundaries at START + k minutes
SAMPLE_SECONDS = 60
PUT_60 = "BTC-26MAR27-60000-P"
PUT_70 = "BTC-26MAR27-70000-P"
CALL_70 = "BTC-26MAR27-70000-C"
OPTIONS = (PUT_60, PUT_70, CALL_70)
COVERED = "PC"  # portfolio: long 1 BTCUSDT, short 1 70,000 call
SPREAD = "PS"  # portfolio: long 1 70,000 put, short 1 60,000 put (a loss bounded by the strikes)
NAKED = "PN"  # portfolio: short 1 60,000 put
REFUSED = "PR"  # holds 0.2 BTCUSDT long on 1,500: the grid's 16% move asks about 2,080
PORTFOLIO_ACCOUNTS = (COVERED, SPREAD, NAKED)
DEPOSITS = {COVERED: "15000", SPREAD: "15000", NAKED: "20000", REFUSED: "1500"}
QUIET_MARKS = 12  # every 20 s from START + 20 s: four sample boundaries of a quiet market
CRASH_MARKS = 12  # then every 20 s, BTC 3% lower each time and the iv up from 0.6 to 0.9
CALM_MARKS = 6  # then at the bottom, iv 0.9
MARK_SECONDS = 20
IV_QUIET, IV_CRASH = D("0.6"), D("0.9")


def _at(seconds: float) -> datetime:
    return START + timedelta(seconds=seconds)


def _wire_time(seconds: float) -> str:
    return _at(seconds).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parameters() -> dict[str, Any]:
    """The bundled document with BTC's grid (CONTRACT v2's example block) and dynamic margin on BTC
    sampled every minute: quiet minutes keep the multiplier at (1 + release_buffer) x the floor,
    minutes that fall 9% take it to the cap within two samples."""
    document = bundled_document()
    document["version"] = "e2e-portfolio-1"
    document["portfolio_margin"] = [
        {
            "underlying": "BTC",
            "price_range": "0.16",
            "price_steps": 4,
            "vol_up": "0.5",
            "vol_down": "0.25",
            "vol_up_floor": "0.5",
            "vol_power": "0.3",
            "vol_reference_days": "30",
            "extreme_moves": ["-0.33", "0.5"],
            "extreme_weight": "0.35",
            "short_option_minimum_rate": "0.01",
            "maintenance_factor": "0.8",
        }
    ]
    document["dynamic_margin"] = [
        {
            "underlying": "BTC",
            "sample_seconds": SAMPLE_SECONDS,
            "lambda": "0.94",
            "initial_volatility": "0.01",
            "reference_volatility": "0.01",
            "multiplier_floor": "1",
            "multiplier_cap": "3",
            "release_buffer": "0.25",
        }
    ]
    return document


PARAMETERS = _parameters()
SPECS = load_parameters(PARAMETERS).instruments_by_symbol


def _option_mark(symbol: str, underlying: Decimal, iv: Decimal, at: datetime) -> str:
    value = option_value(SPECS[symbol], underlying, iv, at, D(0))
    return str(max(D("0.01"), value.quantize(D("0.01"), rounding=ROUND_HALF_EVEN)))


class Market:
    """The test's messages, in event-time order."""

    def __init__(self) -> None:
        self.out: list[tuple[str, str, dict[str, Any]]] = []
        self.trades = 0

    def marks(self, seconds: float, btc: Decimal, iv: Decimal) -> None:
        at = _wire_time(seconds)
        for symbol in ("BTC", "BTCUSDT"):
            self.out.append(("marks", symbol, {"type": "mark", "symbol": symbol, "price": str(btc), "occurred_at": at}))
        for symbol in OPTIONS:
            price = _option_mark(symbol, btc, iv, _at(seconds))
            self.out.append(
                ("marks", symbol, {"type": "mark", "symbol": symbol, "price": price, "iv": str(iv), "occurred_at": at})
            )

    def trade(self, seconds: float, account: str, side: str, quantity: str, instrument: str, price: str) -> None:
        """``account`` trades with the market maker (on the standard model, with deep pockets)."""
        self.trades += 1
        other = "sell" if side == "buy" else "buy"
        for who, how in ((account, side), (MARKET_MAKER, other)):
            self.out.append(
                (
                    "fills",
                    who,
                    {
                        "type": "fill",
                        "fill_id": f"F{self.trades}-{how[0]}",
                        "trade_id": f"T{self.trades}",
                        "account_id": who,
                        "instrument": instrument,
                        "side": how,
                        "quantity": quantity,
                        "price": price,
                        "fee": "0.5",
                        "fee_asset": "USDT",
                        "margin_mode": "cross",
                        "occurred_at": _wire_time(seconds),
                    },
                )
            )

    def request(self, seconds: float, account: str) -> None:
        self.out.append(
            (
                "transfers",
                account,
                {
                    "type": "margin_model",
                    "request_id": f"PM-{account}",
                    "account_id": account,
                    "model": "portfolio",
                    "occurred_at": _wire_time(seconds),
                },
            )
        )


def _market() -> list[tuple[str, str, dict[str, Any]]]:
    market = Market()
    for account, amount in DEPOSITS.items():
        market.out.append(
            (
                "transfers",
                account,
                {
                    "type": "deposit",
                    "transfer_id": f"d{account}",
                    "account_id": account,
                    "asset": "USDT",
                    "amount": amount,
                    "occurred_at": _wire_time(1),
                },
            )
        )
    btc = D(65000)
    market.marks(2, btc, IV_QUIET)
    marks = {symbol: _option_mark(symbol, btc, IV_QUIET, _at(2)) for symbol in OPTIONS}
    for account in PORTFOLIO_ACCOUNTS:
        market.request(3, account)  # nothing open: approved
    market.trade(4, REFUSED, "buy", "0.2", "BTCUSDT", "65000")
    market.request(5, REFUSED)
    market.trade(6, COVERED, "buy", "1", "BTCUSDT", "65000")
    market.trade(6.1, COVERED, "sell", "1", CALL_70, marks[CALL_70])
    market.trade(7, SPREAD, "buy", "1", PUT_70, marks[PUT_70])
    market.trade(7.1, SPREAD, "sell", "1", PUT_60, marks[PUT_60])
    market.trade(8, NAKED, "sell", "1", PUT_60, marks[PUT_60])
    seconds = 0
    for n in range(QUIET_MARKS):  # a wiggle of 0.1%
        seconds += MARK_SECONDS
        market.marks(seconds, D(65000) + (65 if n % 2 else -65), IV_QUIET)
    for n in range(1, CRASH_MARKS + 1):
        seconds += MARK_SECONDS
        btc = (btc * D("0.97")).quantize(D("0.1"))
        market.marks(seconds, btc, IV_QUIET + (IV_CRASH - IV_QUIET) * n / CRASH_MARKS)
    for _ in range(CALM_MARKS):
        seconds += MARK_SECONDS
        market.marks(seconds, btc, IV_CRASH)
    return market.out


def test_portfolio_accounts_hedged_and_naked_through_a_crash_that_raises_the_multiplier(
    in_process_ledger: InProcessLedger, broker: str, topic_prefix: str, owner_engine: sa.Engine
) -> None:
    liquidator = Liquidator(broker, topic_prefix)
    try:
        liquidator.publish_deposit()
        # The document is in force before the first mark: the grid and the sampling cover the market.
        parameters = produce(
            broker,
            topic_prefix,
            [("admin", "e2e", {"type": "risk_parameters", "parameters": PARAMETERS, "occurred_at": _wire_time(0)})],
        )
        in_process_ledger.run_until(merge_ends(liquidator.produced, parameters.ends))
        _settle(in_process_ledger, liquidator, produce(broker, topic_prefix, _market()).ends)
        assert _caught_up(liquidator)
    finally:
        liquidator.close()

    engine = in_process_ledger.engine
    log = _log(engine)
    with engine.connect() as conn:
        dead = conn.execute(sa.text("SELECT error FROM dead_letters")).scalars().all()
    assert dead == []
    decisions = [row for row in log if row.type in ev.DECISION_TYPES]

    # The model changes: three approved (nothing open, no requirement), one refused.
    changed = {row.payload["account_id"]: row.payload for row in decisions if row.type == ev.MARGIN_MODEL_CHANGED}
    assert set(changed) == set(PORTFOLIO_ACCOUNTS)
    assert all(p["model"] == "portfolio" and p["previous_model"] == "standard" for p in changed.values())
    rejected = [row.payload for row in decisions if row.type == ev.MARGIN_MODEL_REJECTED]
    assert [p["account_id"] for p in rejected] == [REFUSED] and rejected[0]["reason"]

    # Dynamic margin: a sample per minute boundary, the multiplier at (1 + 0.25) x 1 in the quiet
    # market, raised by the crash to the cap, and held there at the bottom (the buffer).
    samples = [row for row in decisions if row.type == ev.MARGIN_RATES_CHANGED]
    assert {row.payload["underlying"] for row in samples} == {"BTC"}
    multipliers = [D(row.payload["multiplier"]) for row in samples]
    first_crash_mark = _at((QUIET_MARKS + 1) * MARK_SECONDS)
    quiet = [m for row, m in zip(samples, multipliers, strict=True) if _sample_at(row) < first_crash_mark]
    assert len(quiet) >= 4 and set(quiet) == {D("1.25")}
    assert max(multipliers) == D(3) and multipliers[-1] == D(3)
    first_rise = next(row.position for row, m in zip(samples, multipliers, strict=True) if m > D("1.25"))
    rates = consume_topic(broker, topic_prefix + "margin-rates", lambda v: len(v) >= len(samples))
    assert [D(m["multiplier"]) for m in rates if m["type"] == "margin_rates_changed"] == multipliers

    # Calls and liquidations follow: the covered call (long the perpetual) and the naked put; not
    # the put spread. Every order was executed.
    calls = [row for row in decisions if row.type in (ev.MARGIN_CALL_ISSUED, ev.MARGIN_CALL_ESCALATED)]
    orders = [row for row in decisions if row.type == ev.LIQUIDATION_ORDER_ISSUED]
    called = {row.payload["account_id"] for row in calls}
    assert {COVERED, NAKED} <= called and SPREAD not in called
    assert {COVERED, NAKED} <= {row.payload["account_id"] for row in orders}
    for account in (COVERED, NAKED):
        assert any(row.position > first_rise for row in orders if row.payload["account_id"] == account), account
    # The new rates re-margin at once: a call is decided in the step of a sample that raised the
    # multiplier (the samples come first, the lifecycle then looks under the new rates).
    rises = {
        row.cause_position: row.position
        for row in samples
        if D(row.payload["multiplier"]) > D(row.payload["previous_multiplier"])
    }
    assert any(rises.get(row.cause_position, row.position) < row.position for row in calls)
    filled = {row.payload["liquidation_id"] for row in log if row.type == "LiquidationFillRecorded"}
    assert {row.payload["liquidation_id"] for row in orders} == filled

    ledger = Ledger(engine)
    ledger.load()
    assert conservation(ledger.state) == {}
    assert {a: ledger.state.accounts[a].margin_model for a in (*PORTFOLIO_ACCOUNTS, REFUSED)} == {
        COVERED: "portfolio",
        SPREAD: "portfolio",
        NAKED: "portfolio",
        REFUSED: "standard",
    }

    report = verify(owner_engine)
    assert report.ok, [check.as_dict() for check in report.checks if not check.ok]

    # A portfolio call names the worst cell of its grid (``worst_cells`` on the decision), and
    # ``audit explain`` of it shows that cell (the grid in explain). Until the branches that bring
    # them are merged the test says so (xfail) at that point, and holds them strictly once they are.
    if not WORST_CELLS_ON_DECISIONS:
        pytest.xfail("waits for branch liquidate: decisions on portfolio scopes name their worst_cells")
    call = next(row for row in calls if row.payload["account_id"] == NAKED)
    cells = call.payload["worst_cells"]
    assert [cell["underlying"] for cell in cells] == ["BTC"]
    if not GRID_IN_EXPLAIN:
        pytest.xfail("waits for branch views: audit explain shows a portfolio scope's grid and worst cells")
    text = render(explain(engine, call.payload["margin_call_id"]))
    assert "worst" in text.lower()
    assert cells[0]["move"] in text and cells[0]["volatility"] in text


def _sample_at(row: Any) -> datetime:
    return datetime.fromisoformat(str(row.payload["sample_at"]).replace("Z", "+00:00"))


# A market in which the crash (35%) calls portfolio accounts too (most hedged books ride it out).
SIMULATED = Scenario(
    seed=6,
    accounts=30,
    trades=300,
    steps=60,
    crash_at=0.7,
    crash_depth=D("0.35"),
    options=True,
    portfolio_share=0.3,
    dynamic_margin=True,
)


def test_a_simulated_market_with_portfolio_accounts_and_dynamic_margin_goes_through_the_ledger(
    in_process_ledger: InProcessLedger, broker: str, topic_prefix: str, owner_engine: sa.Engine
) -> None:
    """``clearing simulate --portfolio-share 0.3 --dynamic-margin``'s messages: nothing dead-lettered,
    every portfolio account's request approved, BTC's multiplier raised by the crash, the
    portfolio accounts among those called, ``audit verify`` passes."""
    market = list(generate(SIMULATED))
    liquidator = Liquidator(broker, topic_prefix)
    try:
        liquidator.publish_deposit()
        in_process_ledger.run_until(dict(liquidator.produced))
        _settle(
            in_process_ledger,
            liquidator,
            produce(broker, topic_prefix, ((m.kind, m.key, m.value) for m in market)).ends,
        )
    finally:
        liquidator.close()

    engine = in_process_ledger.engine
    with engine.connect() as conn:
        dead = conn.execute(sa.text("SELECT error FROM dead_letters")).scalars().all()
    assert dead == []
    decisions = [row for row in _log(engine) if row.type in ev.DECISION_TYPES]
    requested = {m.value["account_id"] for m in market if m.value["type"] == "margin_model"}
    changed = {row.payload["account_id"] for row in decisions if row.type == ev.MARGIN_MODEL_CHANGED}
    assert len(requested) == 9 and changed == requested
    btc = [
        D(row.payload["multiplier"])
        for row in decisions
        if row.type == ev.MARGIN_RATES_CHANGED and row.payload["underlying"] == "BTC"
    ]
    assert len(btc) >= SIMULATED.steps // STEPS_PER_SAMPLE - 1 and max(btc) > btc[0]
    called = {row.payload["account_id"] for row in decisions if row.type == ev.MARGIN_CALL_ISSUED}
    assert called & requested
    report = verify(owner_engine)
    assert report.ok, [check.as_dict() for check in report.checks if not check.ok]
