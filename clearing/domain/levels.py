"""Margin levels: the one enum of a scope's status, and the one rule that reads a level from its
figures.

A scope (the cross account, or one isolated position) is at one of five levels. Three of them
are what the numbers call for at an instant (``classify``): ``healthy``, ``warning``,
``maintenance``. The other two are lifecycle states that only decisions reach (DESIGN.md):
``liquidation`` (a maintenance call whose deadline passed: orders issued) and ``bankrupt``
(equity below zero *after* liquidation, with nothing left to liquidate). So no margin model says
``bankrupt``: at negative equity with positions open it says ``maintenance`` (an infinite
ratio), because those positions can still be liquidated and a price move can still recover the
scope. Only the lifecycle, once liquidation has closed everything, decides ``bankrupt``.

The values are the contract's spellings (``level`` of ``margin_call_*`` messages, ``status`` of
``account show``); a ``Level`` is a ``str``, and payloads carry its ``value``.
"""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import Final

from clearing.domain.numbers import ONE, ZERO, divide, round_ratio
from clearing.domain.params import MarginCallPolicy


class Level(StrEnum):
    HEALTHY = "healthy"
    WARNING = "warning"
    MAINTENANCE = "maintenance"
    LIQUIDATION = "liquidation"
    BANKRUPT = "bankrupt"


_RANK: Final[dict[str, int]] = {level: severity for severity, level in enumerate(Level)}
# Liquidation or bankrupt: the scope cannot withdraw or add risk, and its lifecycle moves on
# numbers a trigger price does not watch (target ratio, positions closed). A status read from the
# state, a snapshot or a payload may be plain text: a ``Level`` hashes and compares as its text.
LIQUIDATING: Final = frozenset((Level.LIQUIDATION, Level.BANKRUPT))


def rank(level: str) -> int:
    """Severity: a call is issued or escalated only towards a higher rank."""
    return _RANK[level]


def margin_ratio(equity: Decimal, maintenance: Decimal) -> Decimal | None:
    """maintenance / equity rounded up (``numbers.round_ratio``); None unless both are positive
    (with equity <= 0 against a positive requirement the ratio is infinite)."""
    if equity > ZERO and maintenance > ZERO:
        return round_ratio(divide(maintenance, equity))
    return None


def classify(equity: Decimal, maintenance: Decimal, ratio: Decimal | None, policy: MarginCallPolicy) -> Level:
    """The level a scope's figures call for at one instant, every margin model alike:

    * ``healthy`` without a maintenance requirement (nothing open to call or liquidate: a debt
      with nothing to liquidate is the default waterfall's business, not a margin call's);
    * ``maintenance`` at equity <= 0 (an infinite ratio; not ``bankrupt``, see the module
      docstring) or at ratio >= 1;
    * ``warning`` at ratio >= warning_ratio;
    * else ``healthy``.

    ``ratio`` is ``margin_ratio(equity, maintenance)``. The lifecycle builds deadlines and
    hysteresis (``below_resolve``) on this level; it never recomputes it."""
    if maintenance <= ZERO:
        return Level.HEALTHY
    if equity <= ZERO:
        return Level.MAINTENANCE
    if ratio is not None and ratio >= ONE:
        return Level.MAINTENANCE
    if ratio is not None and ratio >= policy.warning_ratio:
        return Level.WARNING
    return Level.HEALTHY


def below_resolve(equity: Decimal, maintenance: Decimal, ratio: Decimal | None, policy: MarginCallPolicy) -> bool:
    """Whether a call on the scope resolves: its ratio is below resolve_ratio (hysteresis: a
    call issued at warning_ratio does not flap back and forth around it). Without a requirement,
    whenever equity is not negative."""
    if maintenance <= ZERO:
        return equity >= ZERO
    if equity <= ZERO or ratio is None:
        return False
    return ratio < policy.resolve_ratio


def status_distance(equity: Decimal, maintenance: Decimal, policy: MarginCallPolicy) -> Decimal:
    """How far a scope's figures are from a change of what ``classify`` and ``below_resolve``
    read: the smallest |g| of g_0 = equity and g_t = t x equity - maintenance for t in
    (resolve_ratio, warning_ratio, 1), and with equity <= 0 the requirement itself (at none the
    level is healthy whatever the equity). Every t <= 1, so moves of equity and maintenance with
    |d equity| + |d maintenance| below it change no sign, and so no level: what the trigger
    index's bands spend (``margin.budget_bands``, ``portfolio.bands``)."""
    gaps = [
        abs(equity),
        abs(policy.resolve_ratio * equity - maintenance),
        abs(policy.warning_ratio * equity - maintenance),
        abs(equity - maintenance),
    ]
    if equity <= ZERO:
        gaps.append(maintenance)
    return min(gaps)
