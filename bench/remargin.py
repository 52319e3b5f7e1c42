"""Benchmark: re-margin on marks with the trigger index against brute force.

    .venv/bin/python bench/remargin.py [--accounts 100000] [--marks 500] [--brute-accounts 10000]

Builds the state through the domain (fold.step): every account deposits and trades one
instrument against a paired account at varied leverage; then a stream of marks moves the price as a
random walk. Times ``fold.step(state, mark, position)`` per mark (re-margin of the affected scopes,
decisions emitted and applied, index kept), and counts the scopes re-margined and the decisions.
Liquidation orders are filled at their mark against a market maker between marks (not timed), as
the liquidator does. Then the same on a smaller book by brute force (every holder re-margined).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clearing.domain import events as ev
from clearing.domain import fold, lifecycle
from clearing.domain.inputs import Deposit, Fill, LiquidationFill, Mark
from clearing.domain.state import LedgerState
from clearing.runtime import tune_gc

T0 = datetime(2026, 11, 23, 12, tzinfo=UTC)
INSTRUMENT = "BTCUSDT"
MM = "MM-LIQUIDITY"


class Bench:
    def __init__(self, *, brute_force: bool) -> None:
        self.state = LedgerState()
        self.state.triggers.brute_force = brute_force
        self.position = 0
        self.at = T0
        self.fills = 0

    def step(self, message: Any) -> list[ev.Event]:
        self.position += 1
        fold.admit(self.state, message)
        return fold.step(self.state, message, self.position)

    def fill(self, account: str, side: str, quantity: Decimal, price: Decimal) -> None:
        self.fills += 1
        self.step(Fill(fill_id=f"F{self.fills}", trade_id=f"T{self.fills}", account_id=account,
                       instrument=INSTRUMENT, side=side, quantity=quantity, price=price, fee=Decimal(0),
                       fee_asset=None, margin_mode="cross", occurred_at=self.at))

    def fill_orders(self, decisions: list[ev.Event]) -> None:
        for order in decisions:
            if order.type != ev.LIQUIDATION_ORDER_ISSUED:
                continue
            p = order.payload
            quantity, price = Decimal(p["quantity"]), Decimal(p["mark"])
            self.fills += 1
            self.step(LiquidationFill(liquidation_id=p["liquidation_id"],
                                      fill_id=f"LF{self.fills}", account_id=p["account_id"], instrument=INSTRUMENT,
                                      side=p["side"], quantity=quantity, price=price, occurred_at=self.at))
            self.fill(MM, "buy" if p["side"] == "sell" else "sell", quantity, price)


def build(accounts: int, price: Decimal, rng: random.Random, *, brute_force: bool, leverage_max: float) -> Bench:
    """Pairs of accounts, one long and one short of the same quantity, each with the collateral
    that gives it its own leverage: log-uniform between 1x and ``leverage_max``."""
    bench = Bench(brute_force=brute_force)
    bench.step(Mark(symbol=INSTRUMENT, price=price, occurred_at=bench.at))
    bench.step(Deposit(transfer_id="dMM", account_id=MM, asset="USDT",
                       amount=Decimal(10) ** 12, occurred_at=bench.at))
    for pair in range(accounts // 2):
        quantity = Decimal(rng.randint(1, 2000)) / 1000
        notional = quantity * price
        for side, account in (("buy", f"A{2 * pair:06d}"), ("sell", f"A{2 * pair + 1:06d}")):
            leverage = Decimal(str(round(leverage_max ** rng.random(), 3)))
            collateral = (notional / leverage).quantize(Decimal("0.01"))
            bench.step(Deposit(transfer_id=f"d{account}", account_id=account, asset="USDT",
                               amount=collateral, occurred_at=bench.at))
            bench.fill(account, side, quantity, price)
    return bench


def walk(bench: Bench, price: Decimal, marks: int, rng: random.Random, step_bp: float) -> dict[str, list[float]]:
    times: list[float] = []
    cpu: list[float] = []
    scopes: list[float] = []
    emitted: list[float] = []
    counted = [0]
    original = lifecycle._remargin

    def counting(*args: Any, **kwargs: Any) -> Any:
        counted[0] += 1
        return original(*args, **kwargs)

    lifecycle._remargin = counting
    try:
        for _ in range(marks):
            price = (price * Decimal(str(1 + rng.gauss(0, step_bp / 10_000)))).quantize(Decimal("0.01"))
            bench.at += timedelta(seconds=1)
            bench.position += 1
            message = Mark(symbol=INSTRUMENT, price=price, occurred_at=bench.at)
            fold.admit(bench.state, message)
            counted[0] = 0
            started, started_cpu = time.perf_counter(), time.process_time()
            decisions = fold.step(bench.state, message, bench.position)
            times.append((time.perf_counter() - started) * 1000)
            cpu.append((time.process_time() - started_cpu) * 1000)
            scopes.append(counted[0])
            emitted.append(len(decisions))
            bench.fill_orders(decisions)
    finally:
        lifecycle._remargin = original
    return {"ms": times, "cpu": cpu, "scopes": scopes, "decisions": emitted}


def report(name: str, accounts: int, figures: dict[str, list[float]]) -> None:
    ms = sorted(figures["ms"])
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    scopes = figures["scopes"]
    print(
        f"{name:<12} accounts {accounts:>7}  marks {len(ms):>4}  per mark: median {statistics.median(ms):8.2f} ms"
        f"  p99 {p99:8.2f} ms  max {ms[-1]:8.2f} ms  | scopes re-margined median {statistics.median(scopes):.0f}"
        f" p99 {sorted(scopes)[min(len(scopes) - 1, int(len(scopes) * 0.99))]:.0f}"
        f" max {max(scopes):.0f}  | decisions total {sum(figures['decisions']):.0f}"
        f" (max {max(figures['decisions']):.0f} in one mark)"
    )
    cpu = sorted(figures["cpu"])
    print(
        f"{'':<12} CPU time per mark (the same marks; wall time above counts other processes' turns too): "
        f"median {statistics.median(cpu):.2f} ms  p99 {cpu[min(len(cpu) - 1, int(len(cpu) * 0.99))]:.2f} ms"
    )


def main() -> None:
    tune_gc()  # as the clearing command does for its long jobs
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--marks", type=int, default=500)
    parser.add_argument("--brute-accounts", type=int, default=10_000)
    parser.add_argument("--brute-marks", type=int, default=50)
    parser.add_argument("--step-bp", type=float, default=2.0, help="standard deviation of a mark's move, in bp")
    parser.add_argument("--leverage-max", type=float, default=100.0, help="accounts' leverage: log-uniform from 1x")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    price = Decimal(30_000)
    for name, accounts, marks, brute in (
        ("index", args.accounts, args.marks, False),
        ("index", args.brute_accounts, args.brute_marks, False),
        ("brute force", args.brute_accounts, args.brute_marks, True),
    ):
        started = time.perf_counter()
        bench = build(accounts, price, random.Random(args.seed), brute_force=brute, leverage_max=args.leverage_max)
        built = time.perf_counter() - started
        figures = walk(bench, price, marks, random.Random(args.seed + 1), args.step_bp)
        report(name, accounts, figures)
        sys.stdout.flush()
        balance = fold.conservation(bench.state)
        print(f"{'':<12} (book built through fold.step in {built:.1f} s; conservation {balance})")


if __name__ == "__main__":
    main()
