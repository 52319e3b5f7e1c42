"""Which margin model answers for an account: the registry of models and the one selection point.

Every caller that needs a scope's figures asks here (``scope_risk``, ``account_risk``,
``model_of``) and then talks to the ``marginmodel.MarginModel`` interface only. A new model is one
new module with a ``MarginModel`` subclass, registered in ``MODELS`` below.

Selection (CONTRACT v2 "Margin models"): an account's cross scope is margined by the model it
names (``Account.margin_model``: ``DEFAULT_MODEL`` until a ``margin_model`` request changes it);
isolated positions always by ``standard``.
"""

from __future__ import annotations

from typing import Final

from clearing.domain.margin import STANDARD, StandardModel
from clearing.domain.marginmodel import (
    CROSS,
    AccountRisk,
    EvaluatedScope,
    MarginModel,
    MarginModelError,
    PlannedOrder,
    ScopeRisk,
    StateMarks,
)
from clearing.domain.portfolio import PORTFOLIO, PortfolioModel
from clearing.domain.state import Account, LedgerState

STANDARD_MODEL: Final = StandardModel()
PORTFOLIO_MODEL: Final = PortfolioModel()
MODELS: Final[dict[str, MarginModel]] = {STANDARD: STANDARD_MODEL, PORTFOLIO: PORTFOLIO_MODEL}
DEFAULT_MODEL: Final = STANDARD


def model_named(name: str) -> MarginModel:
    """The model a ``margin_model`` field names; ``MarginModelError`` for one this ledger lacks."""
    model = MODELS.get(name)
    if model is None:
        known = ", ".join(sorted(MODELS))
        raise MarginModelError(f"margin model {name!r} is not available in this ledger (available: {known})")
    return model


def model_of(account: Account, scope: str = CROSS) -> MarginModel:
    """The model that margins ``scope`` of ``account``: the account's model for its cross scope,
    ``standard`` for an isolated position."""
    if scope != CROSS:
        return STANDARD_MODEL
    return model_named(account.margin_model)


def scope_risk(state: LedgerState, account: Account, scope: str, *, liquidation_prices: bool = True) -> ScopeRisk:
    """The figures of one scope with the parameters in force and the last marks of ``state``."""
    return model_of(account, scope).evaluate_scope(
        account, state.parameters, StateMarks(state), scope, liquidation_prices=liquidation_prices
    )


def account_risk(state: LedgerState, account: Account, *, liquidation_prices: bool = True) -> AccountRisk:
    """Every scope of ``account`` with the parameters in force and the last marks of ``state``."""
    return model_of(account).evaluate(
        account, state.parameters, StateMarks(state), liquidation_prices=liquidation_prices
    )


def evaluated_scope(state: LedgerState, account: Account, risk: ScopeRisk) -> EvaluatedScope:
    """``risk`` (a scope of ``account`` evaluated by ``scope_risk`` on ``state``) with what it was
    evaluated from: the parameters in force and the last marks of ``state``."""
    return EvaluatedScope(account, state.parameters, StateMarks(state), risk)


def liquidation_plan(state: LedgerState, account: Account, risk: ScopeRisk) -> tuple[PlannedOrder, ...]:
    """The liquidation orders of the scope ``risk`` (``MarginModel.liquidation_plan``), from the
    model that margins it."""
    return model_of(account, risk.scope).liquidation_plan(evaluated_scope(state, account, risk))
