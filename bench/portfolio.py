"""Benchmark: portfolio margin on shared risk arrays (CONTRACT v2 "Portfolio margin").

    .venv/bin/python bench/portfolio.py [--accounts 10000] [--options 100] [--marks 200]
                                         [--option-marks-per-mark 5] [--seed 7]

A chain of ``--options`` BTC options (calls and puts over strikes and two expiries) plus the
BTCUSDT perpetual, all on the underlying BTC, with the contract's example grid (9 moves x 3
volatility cells + 2 extreme cells). ``--accounts`` portfolio accounts hold 5 options each and a
perpetual position. Then ``--marks`` marks of the underlying, a random walk; between two of them,
``--option-marks-per-mark`` option marks with a new iv (one iv per strike and expiry, as a
volatility surface marks a call and its put).

Timed, per mark of the underlying: repricing every instrument's risk array (``scenarios``:
Black-76 in Decimal under a fixed context) and re-computing every account's requirement (a sum
of quantity x array per cell, on packed integers unless ``--decimal-sums``, the worst cell, IM
and MM); per option mark: repricing that option's pair and re-computing only the accounts that
hold either. Beside them, the floor: the same
grid as a vectorised float pass with numpy (every array, then one matrix product quantity x
arrays and a min per account), which is what the hardware does when exactness and
platform-independent digits are given up. numpy is used here only, never in ``clearing``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clearing.domain.numbers import ledger_context
from clearing.domain.params import InstrumentSpec, PortfolioMarginSpec
from clearing.domain.scenarios import (
    PackedArray,
    RiskArray,
    ScenarioGrid,
    linear_array,
    option_pair_arrays,
    pack,
    packed_requirement_figures,
    requirement_figures,
    scaled_quantities,
    scenario_grid,
)

T0 = datetime(2027, 1, 4, 8, tzinfo=UTC)
EXPIRIES = (T0 + timedelta(days=25), T0 + timedelta(days=88))
GRID = {
    "underlying": "BTC", "price_range": "0.16", "price_steps": 4,
    "vol_up": "0.5", "vol_down": "0.25", "vol_up_floor": "0.5", "vol_power": "0.3", "vol_reference_days": "30",
    "extreme_moves": ["-0.33", "0.5"], "extreme_weight": "0.35",
    "short_option_minimum_rate": "0.01", "maintenance_factor": "0.8",
}
POSITIONS_PER_ACCOUNT = 5


def chain(options: int) -> list[InstrumentSpec]:
    """``options`` options: strikes every 2,000 around 70,000, call and put, two expiries."""
    per_expiry = options // len(EXPIRIES)
    strikes = per_expiry // 2
    specs = []
    for expiry in EXPIRIES:
        for index in range(strikes):
            strike = 70_000 + 2_000 * (index - strikes // 2)
            for option_type in ("call", "put"):
                specs.append(InstrumentSpec.model_validate({
                    "symbol": f"BTC-{expiry:%d%b%y}-{strike}-{option_type[0].upper()}".upper(), "kind": "option",
                    "underlying": "BTC", "option_type": option_type, "strike": str(strike),
                    "expiry": expiry.isoformat(), "settlement_asset": "USDT", "contract_size": "1"}))
    return specs


PERPETUAL = InstrumentSpec.model_validate({
    "symbol": "BTCUSDT", "kind": "perpetual", "underlying": "BTC", "settlement_asset": "USDT", "contract_size": "1",
    "tiers": [{"notional_cap": None, "initial_rate": "0.01", "maintenance_rate": "0.005"}]})


@dataclass
class Account:
    positions: list[tuple[InstrumentSpec, Decimal]]
    short_contracts: Decimal
    scaled: list[tuple[int, str]]  # (quantity x 10^places, instrument) for the packed sums
    places: int
    initial_margin: Decimal = Decimal(0)
    worst_index: int = 0


def account(positions: list[tuple[InstrumentSpec, Decimal]]) -> Account:
    shorts = sum((-q * s.contract_size for s, q in positions if s.kind == "option" and q < 0), Decimal(0))
    quantities, places = scaled_quantities([quantity for _, quantity in positions])
    scaled = [(q, spec.symbol) for q, (spec, _) in zip(quantities, positions, strict=True)]
    return Account(positions, shorts, scaled, places)


class Book:
    """Risk arrays shared by every account, and the accounts that hold each instrument."""

    def __init__(
        self, grid: ScenarioGrid, options: list[InstrumentSpec], accounts: list[Account], *, packed: bool
    ) -> None:
        self.grid = grid
        self.use_packed = packed
        self.packed: dict[str, PackedArray | None] = {}
        self.fallbacks = 0
        self.options = options
        self.accounts = accounts
        # One iv per strike and expiry (a volatility surface marks a call and its put alike): the
        # pair is priced once (``option_pair_arrays``), and an option mark reprices both.
        self.pairs = pairs_of(options)
        self.pair_of = {spec.symbol: pair for pair in self.pairs for spec in pair}
        self.iv = {pair: Decimal("0.6") for pair in self.pairs}
        self.arrays: dict[str, RiskArray] = {}
        self.holders: dict[str, list[int]] = {}
        for number, account in enumerate(accounts):
            for spec, _ in account.positions:
                self.holders.setdefault(spec.symbol, []).append(number)
        self.underlying = Decimal(64_000)
        self.at = T0

    def store(self, array: RiskArray) -> None:
        self.arrays[array.instrument] = array
        if self.use_packed:
            self.packed[array.instrument] = pack(array)

    def reprice_all(self) -> None:
        self.store(linear_array(self.grid, PERPETUAL, self.underlying))
        for pair in self.pairs:
            self.reprice_pair(pair)

    def reprice_pair(self, pair: tuple[InstrumentSpec, InstrumentSpec]) -> None:
        for array in option_pair_arrays(self.grid, *pair, self.underlying, self.iv[pair], self.at):
            self.store(array)

    def remargin(self, numbers: list[int] | range) -> None:
        arrays, packed, grid, mark = self.arrays, self.packed, self.grid, self.underlying
        with ledger_context():
            for number in numbers:
                account = self.accounts[number]
                figures = None
                if self.use_packed:
                    pairs = [(quantity, packed[symbol]) for quantity, symbol in account.scaled]
                    if all(array is not None for _, array in pairs):
                        figures = packed_requirement_figures(
                            grid, pairs, account.places, account.short_contracts, mark  # type: ignore[arg-type]
                        )
                if figures is None:
                    self.fallbacks += self.use_packed
                    decimal_pairs = [(quantity, arrays[spec.symbol].pnl) for spec, quantity in account.positions]
                    figures, _ = requirement_figures(grid, decimal_pairs, account.short_contracts, mark)
                account.initial_margin = figures.initial_margin
                account.worst_index = figures.worst_index


def pairs_of(options: list[InstrumentSpec]) -> list[tuple[InstrumentSpec, InstrumentSpec]]:
    calls = {(spec.strike, spec.expiry): spec for spec in options if spec.option_type == "call"}
    return [(calls[(spec.strike, spec.expiry)], spec) for spec in options if spec.option_type == "put"]


def build(accounts: int, options: int, rng: random.Random, *, packed: bool) -> Book:
    specs = chain(options)
    book_accounts = []
    for _ in range(accounts):
        held = rng.sample(specs, POSITIONS_PER_ACCOUNT)
        positions = [(spec, Decimal(rng.choice((-1, 1)) * rng.randint(1, 40)) / 10) for spec in held]
        positions.append((PERPETUAL, Decimal(rng.randint(-200, 200)) / 100))
        book_accounts.append(account(positions))
    return Book(scenario_grid(PortfolioMarginSpec.model_validate(GRID)), specs, book_accounts, packed=packed)


# ------------------------------------------------------------------------------------------------
# The floor: the same grid in float64 with numpy


def floor_pass(book: Book, np: Any, quantities: Any) -> None:
    """One vectorised float pass over every array and every account."""
    grid = book.grid
    moves = np.array([float(cell.move) for cell in grid.cells])
    vol_column = np.array([("up", "unchanged", "down").index(cell.volatility) for cell in grid.cells])
    specs = book.options
    strikes = np.array([float(spec.strike or 0) for spec in specs])[:, None]
    is_call = np.array([spec.option_type == "call" for spec in specs])[:, None]
    years = np.array([(spec.expiry - book.at).total_seconds() / 31_536_000 for spec in specs  # type: ignore[operator]
                      ])[:, None]
    days = years * 365
    iv = np.array([float(book.iv[book.pair_of[spec.symbol]]) for spec in specs])[:, None]
    scale = (30 / np.maximum(days, 1)) ** 0.3
    vols = np.concatenate([np.maximum(iv * (1 + 0.5 * scale), 0.5), iv, np.maximum(iv * (1 - 0.25 * scale), 0)], 1)
    cell_vol = vols[:, vol_column]
    forward = float(book.underlying)

    def black76(f: Any, sigma: Any) -> Any:
        root = np.sqrt(years)
        deviation = np.maximum(sigma * root, 1e-300)
        d1 = (np.log(f / strikes) + sigma * sigma * years / 2) / deviation
        d2 = d1 - deviation
        cdf = _normal_cdf(np)
        call = f * cdf(d1) - strikes * cdf(d2)
        put = strikes * cdf(-d2) - f * cdf(-d1)
        return np.where(is_call, call, put)

    base = black76(forward, iv)
    option_arrays = black76(forward * (1 + moves)[None, :], cell_vol) - base
    arrays = np.vstack([option_arrays, (forward * moves)[None, :]])
    totals = quantities @ arrays
    weights = np.array([float(cell.weight) for cell in grid.cells])
    worst = (totals * weights).min(axis=1)
    _ = np.maximum(-worst, 0), (totals * weights).argmin(axis=1)


def _normal_cdf(np: Any) -> Any:
    # Abramowitz and Stegun 26.2.17 (absolute error below 7.5e-8): numpy has no erf, and the floor
    # is about speed, not digits.
    def cdf(x: Any) -> Any:
        t = 1 / (1 + 0.2316419 * np.abs(x))
        poly = t * (0.319381530 + t * (-0.356563782 + t * (1.781477937 + t * (-1.821255978 + t * 1.330274429))))
        upper = np.exp(-x * x / 2) / 2.5066282746310002 * poly
        return np.where(x >= 0, 1 - upper, upper)

    return cdf


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


class Clock:
    """Wall and CPU seconds of this process: the machine is shared, and the wall clock there also
    counts the time other processes held the cores."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __enter__(self) -> Clock:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *_: object) -> None:
        self.wall.append(time.perf_counter() - self._wall)
        self.cpu.append(time.process_time() - self._cpu)


def line(name: str, clock: Clock) -> None:
    def figures(values: list[float]) -> str:
        return f"median {statistics.median(values) * 1e3:7.1f} ms  p99 {percentile(values, 0.99) * 1e3:7.1f} ms"

    print(f"  {name:<36} cpu {figures(clock.cpu)}   wall {figures(clock.wall)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--options", type=int, default=100)
    parser.add_argument("--marks", type=int, default=200)
    parser.add_argument("--option-marks-per-mark", type=int, default=5)
    parser.add_argument("--decimal-sums", action="store_true", help="sum in Decimal, not on packed integers")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    book = build(args.accounts, args.options, rng, packed=not args.decimal_sums)
    print(f"{len(book.accounts)} accounts x {POSITIONS_PER_ACCOUNT} options + the perpetual; "
          f"{len(book.options)} options + 1 perpetual on BTC; grid of {len(book.grid.cells)} cells; "
          f"sums {'in Decimal' if args.decimal_sums else 'on packed integers'}")
    book.reprice_all()
    book.remargin(range(len(book.accounts)))
    reprice, remargin, total, option = Clock(), Clock(), Clock(), Clock()
    holders_seen = []
    for _ in range(args.marks):
        book.at += timedelta(seconds=rng.randint(1, 5))
        book.underlying = (book.underlying * Decimal(1 + rng.gauss(0, 0.003))).quantize(Decimal("0.1"))
        with total:
            with reprice:
                book.reprice_all()
            with remargin:
                book.remargin(range(len(book.accounts)))
        for _ in range(args.option_marks_per_mark):
            pair = rng.choice(book.pairs)
            book.iv[pair] = (book.iv[pair] * Decimal(1 + rng.gauss(0, 0.02))).quantize(Decimal("0.0001"))
            holders = sorted({number for spec in pair for number in book.holders.get(spec.symbol, [])})
            holders_seen.append(len(holders))
            with option:
                book.reprice_pair(pair)
                book.remargin(holders)
    digits = sorted({array.digits for array in book.arrays.values() if array.digits is not None})
    print(f"per mark of the underlying ({args.marks} marks; Black-76 digits used: {digits}; "
          f"accounts summed in Decimal for want of packing: {book.fallbacks}):")
    line(f"reprice {len(book.arrays)} risk arrays", reprice)
    line(f"re-margin {len(book.accounts)} accounts", remargin)
    line("total", total)
    if holders_seen:
        print(f"per option mark ({len(holders_seen)} marks of a call and its put, "
              f"{statistics.mean(holders_seen):.0f} holders on average):")
        line("reprice 2 arrays + re-margin holders", option)
    try:
        import numpy as np
    except ImportError:
        print("numpy is not installed: no float floor (pip install numpy into the venv to see it)")
        return
    index = {spec.symbol: number for number, spec in enumerate(book.options)}
    index[PERPETUAL.symbol] = len(book.options)
    quantities = np.zeros((len(book.accounts), len(index)))
    for number, held in enumerate(book.accounts):
        for spec, quantity in held.positions:
            quantities[number, index[spec.symbol]] = float(quantity)
    floor = Clock()
    for _ in range(max(20, min(args.marks, 200))):
        with floor:
            floor_pass(book, np, quantities)
    print("floor: numpy float64, every array and every account in one vectorised pass:")
    line("per mark of the underlying", floor)
    print(f"ratio to the floor (cpu): median {statistics.median(total.cpu) / statistics.median(floor.cpu):.0f}x, "
          f"p99 {percentile(total.cpu, 0.99) / percentile(floor.cpu, 0.99):.0f}x")


if __name__ == "__main__":
    main()
