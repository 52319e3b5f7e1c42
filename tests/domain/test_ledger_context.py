"""``numbers.ledger_context``: a loop of domain calls enters the ledger context once, and the
caller's context is back afterwards, also when the loop fails."""

from __future__ import annotations

from decimal import Clamped, Context, Decimal, getcontext, localcontext

import pytest

from clearing.domain import numbers


def test_the_block_runs_under_the_ledger_context_and_restores_the_callers() -> None:
    with localcontext(Context(prec=5)) as outer:
        with numbers.ledger_context():
            inside = getcontext()
            assert inside.prec == numbers.LEDGER_PRECISION_DIGITS
            assert inside.traps[Clamped]
            # Exact inside the block, as in every ``exact`` function: 5 digits would round this.
            assert Decimal("1.00001") * Decimal("3") == Decimal("3.00003")
            assert numbers.divide(Decimal(1), Decimal(3)) == numbers.LEDGER_CONTEXT.divide(Decimal(1), Decimal(3))
        assert getcontext() is outer


def test_the_callers_context_is_restored_when_the_block_raises() -> None:
    with localcontext(Context(prec=7)) as outer:
        with pytest.raises(RuntimeError), numbers.ledger_context():
            raise RuntimeError("a failed batch")
        assert getcontext() is outer
        assert Decimal(1) / Decimal(3) == Decimal("0.3333333")
