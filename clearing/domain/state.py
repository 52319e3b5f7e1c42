"""The ledger's state: accounts with balances and positions, last marks, the parameters in force.

The fold mutates this state in place for speed (a ledger process folds tens of thousands of events
a second); ``apply`` is still a function of (state, event) alone, so replaying the same events into
a fresh state gives the same state, which the property tests and ``audit verify`` check.

Positions keep their cost (signed quantity x price x contract size of the open lots) rather than
an averaged entry price: cost is exact, so realised plus unrealised PnL over both sides of every
trade sums to zero to the last digit. The entry price shown to people is cost / quantity.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Final, NamedTuple

from clearing.domain.dynamicmargin import VolatilityState
from clearing.domain.numbers import ONE, ZERO, divide, round_display_price
from clearing.domain.params import RiskParameters, log_start_parameters

FEE_ACCOUNT: Final = "system:fees"
INSURANCE_FUND_ACCOUNT: Final = "system:insurance-fund"
# Funding passes through a pool: longs pay into it and shorts are paid from it (or the other way).
# Over complete books the pool nets to zero; fills of one trade arrive on different partitions, so
# a funding event can fall between the two fills of a trade, and the pool then holds the
# difference in plain sight instead of the books going out of balance.
FUNDING_POOL_ACCOUNT: Final = "system:funding-pool"
SYSTEM_ACCOUNTS: Final = (FEE_ACCOUNT, INSURANCE_FUND_ACCOUNT, FUNDING_POOL_ACCOUNT)
# Trades whose first fill a shard keeps while it waits for the second (``LedgerState.open_fills``).
# A trade's second fill usually follows its first within the same batch, so in a single shard
# the map holds the few trades in flight, lone fills and the market sides of liquidation
# executions (one-fill trades whose other side is a liquidation fill, which names no trade).
# Across shards a trade's two fills may land on two shards, and neither ever sees the other:
# those first fills wait here until newer ones push them out, the oldest first. The limit bounds
# that memory (about 300 bytes a trade, 30 MB at the limit) and the snapshot's size; a second
# fill whose first was pushed out is taken as a first fill (``audit verify`` still pairs them).
OPEN_FILLS_MAX: Final = 100_000


class OpenFill(NamedTuple):
    """What a trade's second fill is checked against: the terms of its first."""

    fill_id: str
    account_id: str
    instrument: str
    side: str
    quantity: Decimal
    price: Decimal


@dataclass(slots=True)
class Position:
    instrument: str
    margin_mode: str  # "cross" or "isolated"
    quantity: Decimal = ZERO  # signed contracts, negative = short
    # signed quantity x entry price x contract size of the open lots (an option's: the premium
    # paid for them, negative for premium received; it is already in the balance)
    cost: Decimal = ZERO
    realised_pnl: Decimal = ZERO  # cumulative, in the settlement asset
    isolated_margin: Decimal = ZERO  # collateral allocated to an isolated position
    funding_paid: Decimal = ZERO  # cumulative funding, positive = paid by this position

    @property
    def key(self) -> tuple[str, str]:
        return (self.instrument, self.margin_mode)

    def entry_price(self, contract_size: Decimal) -> Decimal | None:
        if self.quantity == ZERO:
            return None
        return round_display_price(divide(self.cost, self.quantity * contract_size))

    @property
    def is_open(self) -> bool:
        return self.quantity != ZERO

    def copy(self) -> Position:
        return Position(
            self.instrument,
            self.margin_mode,
            self.quantity,
            self.cost,
            self.realised_pnl,
            self.isolated_margin,
            self.funding_paid,
        )


@dataclass(slots=True)
class Account:
    account_id: str
    balances: dict[str, Decimal] = field(default_factory=dict)
    positions: dict[tuple[str, str], Position] = field(default_factory=dict)
    # Margin-call lifecycle of the cross account and of each isolated position; see lifecycle.py.
    margin: dict[str, MarginStatus] = field(default_factory=dict)
    deficit: Decimal = ZERO  # loss beyond equity left after liquidation (bankrupt accounts)
    # The margin model of the cross scope (``models.MODELS``), changed by ``margin_model`` requests;
    # isolated positions are always on the standard model.
    margin_model: str = "standard"

    def balance(self, asset: str) -> Decimal:
        return self.balances.get(asset, ZERO)

    def credit(self, asset: str, amount: Decimal) -> None:
        self.balances[asset] = self.balances.get(asset, ZERO) + amount

    def debit(self, asset: str, amount: Decimal) -> None:
        """``credit(asset, -amount)`` without the negation (the decimal module subtracts by
        adding the negated operand, so the result is the same to the last digit and sign)."""
        self.balances[asset] = self.balances.get(asset, ZERO) - amount

    def position(self, instrument: str, margin_mode: str) -> Position:
        key = (instrument, margin_mode)
        found = self.positions.get(key)
        if found is None:
            found = self.positions[key] = Position(instrument, margin_mode)
        return found

    def open_positions(self) -> list[Position]:
        return [p for p in self.positions.values() if p.quantity != ZERO or p.isolated_margin != ZERO]

    def copy(self) -> Account:
        return Account(
            self.account_id,
            dict(self.balances),
            {key: p.copy() for key, p in self.positions.items()},
            {key: status.copy() for key, status in self.margin.items()},
            self.deficit,
            self.margin_model,
        )


@dataclass(slots=True)
class MarginStatus:
    """Lifecycle state of one margin scope: the cross account ("cross") or an isolated position
    ("isolated:<instrument>")."""

    # The text of a ``levels.Level`` (text, as snapshots and payloads hold it; compares equal to
    # the Level it spells).
    status: str = "healthy"
    margin_call_id: str | None = None
    deadline: datetime | None = None
    pending_orders: list[str] = field(default_factory=list)  # liquidation ids not yet fully filled

    def copy(self) -> MarginStatus:
        return MarginStatus(self.status, self.margin_call_id, self.deadline, list(self.pending_orders))


@dataclass(slots=True)
class LiquidationOrder:
    liquidation_id: str
    account_id: str
    scope: str
    instrument: str
    margin_mode: str
    side: str
    quantity: Decimal
    remaining: Decimal
    # Cancelled when its margin call resolved. The contract has no cancel message, so the exchange
    # may still execute it: such executions are facts and are booked like any other.
    cancelled: bool = False

    def copy(self) -> LiquidationOrder:
        return LiquidationOrder(
            self.liquidation_id,
            self.account_id,
            self.scope,
            self.instrument,
            self.margin_mode,
            self.side,
            self.quantity,
            self.remaining,
            self.cancelled,
        )


@dataclass(slots=True)
class MarkState:
    price: Decimal
    occurred_at: datetime
    iv: Decimal | None = None


@dataclass(slots=True)
class TriggerIndex:
    """Derived state (clearing/domain/triggers.py): per symbol, the marks at which a margin scope
    must be looked at again. Rebuilt from the rest of the state whenever ``stale``.

    ``lowers[symbol]`` is a max-heap of (-lower, account, scope, version), ``uppers[symbol]`` a
    min-heap of (upper, account, scope, version); an entry whose version is not the account's
    current one is dead (lazy deletion). ``always[symbol]``: accounts re-margined in full on
    every mark of the symbol (scopes that depend on several prices, or that are liquidating)."""

    brute_force: bool = False  # re-margin every dependent of a marked symbol (the reference mode)
    stale: bool = True
    lowers: dict[str, list[tuple[Decimal, str, str, int]]] = field(default_factory=dict)
    uppers: dict[str, list[tuple[Decimal, str, str, int]]] = field(default_factory=dict)
    version: dict[str, int] = field(default_factory=dict)
    heap_symbols: dict[str, tuple[str, ...]] = field(default_factory=dict)  # account -> symbols with entries
    live: dict[str, int] = field(default_factory=dict)  # symbol -> live heap entries
    always: dict[str, set[str]] = field(default_factory=dict)
    always_symbols: dict[str, tuple[str, ...]] = field(default_factory=dict)  # account -> symbols
    seen: set[str] = field(default_factory=set)  # symbols marked while the index was kept
    # Accounts whose ordinary fills and funding payments the index can absorb without a
    # re-margin (triggers.py, ``absorbs_fill``), and how many it absorbed (for benchmarks, tests).
    budgets: dict[str, FillBudget] = field(default_factory=dict)
    absorbed: int = 0


@dataclass(slots=True)
class BudgetedPosition:
    """A position of a budgeted account as it was when its bands were computed, and how far the
    fills absorbed since have moved it (kept up to date by ``triggers.absorbs_fill``)."""

    size: Decimal  # |quantity| at the reference
    unit: Decimal  # contract size x the mark at the reference: equity per contract
    unit_rate: Decimal  # unit x the instrument's largest maintenance rate
    unit_spread: Decimal  # contract size x (1 + that rate) x the band's half-width, rounded up
    # quantity x unit - cost, as the last absorbed fill left it (its own at the reference): its
    # equity at the reference prices, less the balance; a fill moves the total by the difference.
    value: Decimal
    # |d |quantity|| x unit_rate since the reference (how far its maintenance requirement moved)
    # + |quantity now| x unit_spread (how far in-band prices can move it): what it spends of the
    # budget besides its equity, in one sum, as the test adds them.
    fixed: Decimal


@dataclass(slots=True)
class FillBudget:
    """What ``triggers.absorbs_fill`` needs of a cross account indexed by a budget: the
    valuation-asset balance and the positions at the reference, and what is left of the budget
    as the absorbed fills spend it. Derived state, replaced whenever the account is refreshed.

    The test ``|d balance + d equity| + fixed terms (+ haircut x |d balance|) < budget`` is kept
    as ``|balance + offset| (+ haircut x |d balance|) < slack``: the two running totals absorb
    the reference balance and the fixed terms as they change, so that the test, asked on every
    fill and for every funding payment, is two decimal operations shorter."""

    balance: Decimal  # at the reference (the haircut's term only)
    haircut: Decimal  # the valuation asset's largest haircut rate
    positions: dict[str, BudgetedPosition]  # by instrument
    # The positions' equity moves (value now - value at the reference), less the reference balance.
    offset: Decimal
    # The budget less the positions' ``fixed``, the collateral bands' share and a rounding step of
    # each requirement.
    slack: Decimal


class InstrumentTerms:
    """What the fold reads of an instrument's spec on every fill, as plain attributes."""

    def __init__(self, contract_size: Decimal, settlement_asset: str, is_option: bool = False) -> None:
        self.contract_size: Final = contract_size
        self.settlement_asset: Final = settlement_asset
        # An option's fill moves its premium through the balance (``booking.trade_option``).
        self.is_option: Final = is_option
        # A contract size of exactly 1 (no exponent): a product with it is the other factor,
        # digit for digit and exponent for exponent, so ``times_size`` leaves it out.
        self.unit_contract: Final = contract_size.as_tuple() == (0, (1,), 0)

    def times_size(self, amount: Decimal) -> Decimal:
        """``amount x contract size`` (a quantity x price made a notional, as ``booking.trade``
        books it), without the multiplication when the size is exactly 1."""
        return amount if self.unit_contract else amount * self.contract_size


class Terms:
    """The parameters the fold reads on every fill (``LedgerState.terms``), copied out of the
    pydantic models: a read of a model's field goes through the model class's attribute hook,
    and an ordinary fill read five or six of them (docs/performance.md)."""

    def __init__(self, parameters: RiskParameters) -> None:
        self.parameters: Final = parameters  # the document these were copied from
        self.valuation_asset: Final = parameters.valuation_asset
        self.instruments: Final = {
            spec.symbol: InstrumentTerms(spec.contract_size, spec.settlement_asset, spec.kind == "option")
            for spec in parameters.instruments
        }


@dataclass(slots=True)
class LedgerState:
    # A new state is a log before its first event: the log-start parameters are in force (a log
    # that names none was written under them). A ledger opening an empty log appends the current
    # bundled document as its first event (``engine.ledger``); a test that wants the current
    # document says so (``LedgerState(parameters=bundled_parameters())``).
    parameters: RiskParameters = field(default_factory=log_start_parameters)
    accounts: dict[str, Account] = field(default_factory=dict)
    marks: dict[str, MarkState] = field(default_factory=dict)
    # Totals that the conservation invariant is checked against.
    deposits: dict[str, Decimal] = field(default_factory=dict)
    withdrawals: dict[str, Decimal] = field(default_factory=dict)
    last_occurred_at: datetime | None = None
    # Instrument -> accounts with an open position in it (funding, settlement, re-margin on marks).
    holders: dict[str, set[str]] = field(default_factory=dict)
    # Liquidation orders issued and not yet fully filled or cancelled, by liquidation id.
    liquidations: dict[str, LiquidationOrder] = field(default_factory=dict)
    # (account, scope) of margin calls at maintenance level with a deadline still to come.
    deadlines: dict[tuple[str, str], datetime] = field(default_factory=dict)
    # Accounts whose stored projections are out of date (the engine clears it after each batch).
    touched: set[str] = field(default_factory=set)
    marks_touched: set[str] = field(default_factory=set)
    # Trigger prices for re-margin on marks (derived; see clearing/domain/triggers.py).
    triggers: TriggerIndex = field(default_factory=TriggerIndex)
    # Trade id -> the first fill of a trade whose second has not arrived, oldest first (at most
    # OPEN_FILLS_MAX); and fill id -> the bust id that reversed it (busts are rare corrections).
    open_fills: OrderedDict[str, OpenFill] = field(default_factory=OrderedDict)
    busted_fills: dict[str, str] = field(default_factory=dict)
    # Dynamic margin per underlying (``dynamicmargin``): the last sample and the multiplier in
    # force, as the ``MarginRatesChanged`` decisions left them.
    volatility: dict[str, VolatilityState] = field(default_factory=dict)
    # ``terms()``'s copy, for the parameters it was made from (derived, not part of the state).
    terms_cache: Terms | None = field(default=None, repr=False, compare=False)

    def terms(self) -> Terms:
        """The per-fill reads of ``parameters``, made again whenever ``parameters`` is another
        document (the parameters are frozen, so the same document has the same terms)."""
        terms = self.terms_cache
        if terms is None or terms.parameters is not self.parameters:
            terms = self.terms_cache = Terms(self.parameters)
        return terms

    def account(self, account_id: str) -> Account:
        found = self.accounts.get(account_id)
        if found is None:
            found = self.accounts[account_id] = Account(account_id)
        return found

    def holders_all(self) -> set[str]:
        return set().union(*self.holders.values()) if self.holders else set()

    def mark_price(self, symbol: str) -> Decimal | None:
        mark = self.marks.get(symbol)
        return None if mark is None else mark.price

    def multiplier(self, underlying: str) -> Decimal:
        """Dynamic margin's multiplier in force for ``underlying`` (1 before its first sample)."""
        found = self.volatility.get(underlying)
        return ONE if found is None else found.multiplier

    def asset_price(self, asset: str) -> Decimal | None:
        """Price of one unit of a collateral asset in the valuation asset."""
        if asset == self.parameters.valuation_asset:
            return ONE
        return self.mark_price(asset)
