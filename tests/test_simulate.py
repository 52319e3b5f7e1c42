"""``clearing simulate --trades N`` makes N trades (on 05ad1d6, 5,000 asked over 120 steps made 4,920:
the per-step share was rounded down)."""

from __future__ import annotations

import pytest

from clearing.simulate import Scenario, generate


@pytest.mark.parametrize(("trades", "steps"), [(5_000, 120), (400, 60), (7, 20), (120, 120), (1, 3)])
def test_the_number_of_trades_asked_for_is_made(trades: int, steps: int) -> None:
    fills = [m for m in generate(Scenario(accounts=10, trades=trades, steps=steps)) if m.kind == "fills"]
    assert len(fills) == 2 * trades
    assert len({m.value["trade_id"] for m in fills}) == trades
