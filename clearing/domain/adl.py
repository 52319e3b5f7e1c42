"""Auto-deleveraging (CONTRACT v2 ``adl``, DESIGN.md "Default waterfall, complete"): when it is
due, and the ranking of the opposite positions it takes.

Waterfall: liquidation fee to the fund -> the fund covers the deficit -> auto-deleveraging of
ranked opposite positions at the bankruptcy price -> what is still left is a recorded deficit.
The lifecycle decides the steps (``lifecycle._auto_deleverage``); this module answers the
questions they ask, from the margin model's figures only, so that it ranks positions of any
model (standard, portfolio) and of either margin mode alike.

Rank of a position of signed quantity q, entry price E, mark M, bankruptcy price B (CONTRACT v2):

    pnl = q (M - E) / (|q| E)          = (q x cs x M - cost) / |cost|   (cost = q x cs x E)
    leverage = |q| M / |q (M - B)|     = M / |M - B|
    rank = pnl x leverage  when pnl > 0,  else pnl / leverage

B is the position's own bankruptcy price (closing all of it leaves its scope's equity at zero):
the model's unrounded ``bankruptcy_price``. At M = B (scope equity exactly zero) the leverage is
infinite: the rank is then infinite with a profit (first in line) and zero without. Ties go to
the lower account id, then cross before isolated. Every figure is exact under the ledger context;
only the copies on the wire are rounded (``round_model_value``).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Final, NamedTuple

from clearing.domain import models
from clearing.domain.marginmodel import CROSS, ScopeRisk, isolated_scope
from clearing.domain.numbers import ZERO, divide, round_display_price
from clearing.domain.state import INSURANCE_FUND_ACCOUNT, SYSTEM_ACCOUNTS, Account, LedgerState, Position

# The quantiles shown beside each position (CONTRACT v2 / issue 25: 1 to 5, as exchanges show
# it): 5 is the top fifth of the ranking of its side, first in line.
QUANTILES: Final = 5


class Candidate(NamedTuple):
    """One open position as the ranking sees it."""

    account_id: str
    margin_mode: str
    scope: str
    quantity: Decimal  # signed contracts
    entry_price: Decimal  # shown (cost / (q x cs), rounded)
    mark: Decimal  # the price the model valued it at, as shown (an entry price rounded when unmarked)
    bankruptcy_price: Decimal  # unrounded
    pnl: Decimal
    leverage: Decimal | None  # None: infinite
    rank: Decimal | None  # None: infinite

    def order(self) -> tuple[int, Decimal, str, str]:
        """Sort key: highest rank first, then the lower account id, cross before isolated."""
        if self.rank is None:
            return (0, ZERO, self.account_id, self.margin_mode)
        return (1, -self.rank, self.account_id, self.margin_mode)


def enabled(state: LedgerState) -> bool:
    """Whether the parameters in force enable auto-deleveraging. A document without an ``adl``
    block (every document before v2, and so every log written before it) does not."""
    policy = state.parameters.adl
    return policy is not None and policy.enabled


def fund_balance(state: LedgerState) -> Decimal:
    """The insurance fund's balance in the valuation asset."""
    fund = state.accounts.get(INSURANCE_FUND_ACCOUNT)
    return ZERO if fund is None else fund.balance(state.parameters.valuation_asset)


def due(state: LedgerState, risk: ScopeRisk) -> bool:
    """Whether a scope in liquidation is to be auto-deleveraged: ADL is enabled, the scope holds
    positions, its equity is below zero at the marks and the fund cannot cover that deficit."""
    if not enabled(state) or not risk.has_open_positions or risk.equity >= ZERO:
        return False
    return fund_balance(state) < -risk.equity


def candidate(state: LedgerState, account: Account, position: Position) -> Candidate | None:
    """The ranking figures of one open position (None when it is closed or unvalued)."""
    if position.quantity == ZERO:
        return None
    scope = CROSS if position.margin_mode == CROSS else isolated_scope(position.instrument)
    risk = models.scope_risk(state, account, scope, liquidation_prices=False)
    figures = risk.position(position.instrument)
    if figures is None or figures.quantity == ZERO:
        return None
    raw, _rounded = models.model_of(account, scope).bankruptcy_price(figures, risk.equity, abs(figures.quantity))
    mark = figures.price_used
    cost = figures.cost
    pnl = divide(figures.quantity * figures.contract_size * mark - cost, abs(cost)) if cost != ZERO else ZERO
    distance = abs(mark - raw)
    leverage = divide(mark, distance) if distance != ZERO else None
    rank: Decimal | None
    if leverage is None:
        rank = None if pnl > ZERO else ZERO
    else:
        rank = pnl * leverage if pnl > ZERO else divide(pnl, leverage)
    entry = round_display_price(divide(cost, figures.quantity * figures.contract_size))
    shown = mark if figures.marked else round_display_price(mark)
    return Candidate(
        account.account_id, position.margin_mode, scope, figures.quantity, entry, shown, raw, pnl, leverage, rank
    )


def ranking(state: LedgerState, instrument: str, long: bool, exclude: str | None = None) -> list[Candidate]:
    """The open positions of ``instrument`` on the ``long`` side (``long=False``: the shorts), of
    every account but ``exclude`` and the clearing house's own, highest rank first. The
    candidates of a bankrupt long are ``ranking(state, instrument, long=False, exclude=it)``."""
    found: list[Candidate] = []
    for account_id in state.holders.get(instrument, ()):
        if account_id == exclude or account_id in SYSTEM_ACCOUNTS:
            continue
        account = state.accounts[account_id]
        for position in account.positions.values():
            if position.instrument != instrument or position.quantity == ZERO:
                continue
            if (position.quantity > ZERO) != long:
                continue
            figures = candidate(state, account, position)
            if figures is not None:
                found.append(figures)
    found.sort(key=Candidate.order)
    return found


def quantile(place: int, count: int) -> int:
    """The quantile (1 to ``QUANTILES``) of the ``place``-th (0-based) of ``count`` ranked
    positions: ``QUANTILES`` for the first fifth (first in line), 1 for the last."""
    if count <= 0:
        return 1
    return QUANTILES - (place * QUANTILES) // count


def standing(state: LedgerState, account: Account) -> dict[tuple[str, str], tuple[Candidate, int]]:
    """Every open position of ``account`` with its ranking figures and quantile among the
    positions of its side of the same instrument, by (instrument, margin mode)."""
    out: dict[tuple[str, str], tuple[Candidate, int]] = {}
    held = sorted({(p.instrument, p.quantity > ZERO) for p in account.positions.values() if p.quantity != ZERO})
    for instrument, long in held:
        ranked = ranking(state, instrument, long)
        for place, found in enumerate(ranked):
            if found.account_id == account.account_id:
                out[(instrument, found.margin_mode)] = (found, quantile(place, len(ranked)))
    return out
