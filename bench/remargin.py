"""Benchmark: re-margin on marks with the trigger index against brute force.

    .venv/bin/python bench/remargin.py [--accounts 100000] [--marks 500] [--brute-accounts 10000]
    .venv/bin/python bench/remargin.py --options [--option-accounts 10000] [--marks 500]

Builds the state through the domain (fold.step): every account deposits and trades one
instrument against a paired account at varied leverage; then a stream of marks moves the price as a
random walk. Times ``fold.step(state, mark, position)`` per mark (re-margin of the affected scopes,
decisions emitted and applied, index kept), and counts the scopes re-margined and the decisions.
Liquidation orders are filled at their mark against a market maker between marks (not timed), as
the liquidator does. Then the same on a smaller book by brute force (every holder re-margined).

``--options``: an options book instead (``options_book``): a chain of 52 BTC options (two
expiries, 13 strikes, calls and puts), accounts short and long one to three of them against a
market maker, and marks of the underlying (BTC) and of single options in turn, timed apart; beside
them the floor: one vectorised float pass (numpy, ``pip install '.[bench]'``) over the same book
computing every account's equity, maintenance and level, which is what a mark costs at the least
with no index, no exact decimals and no decisions.

``--options --portfolio``: the same book with every option account on the portfolio model (the
contract's example grid for BTC), walked twice from the same state: with the index's bands for
portfolio scopes, then with ``brute_force`` (every holder re-margined on every mark: what a
portfolio scope cost before it had bands); printed side by side, the scopes a mark of the
underlying re-margines in each.
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

from clearing import COMPILED_IN_USE
from clearing.domain import events as ev
from clearing.domain import fold, lifecycle
from clearing.domain.black76 import option_value
from clearing.domain.inputs import Deposit, Fill, LiquidationFill, Mark
from clearing.domain.params import bundled_document, load_parameters
from clearing.domain.state import LedgerState
from clearing.runtime import tune_gc

T0 = datetime(2026, 11, 23, 12, tzinfo=UTC)
# The scopes a mark re-margins are counted by wrapping ``lifecycle._remargin``, which the compiled
# lifecycle calls directly: counted only on the source build.
NOT_COUNTED = "not counted (the compiled lifecycle calls _remargin directly: CLEARING_PURE_PYTHON=1 counts them)"
INSTRUMENT = "BTCUSDT"
MM = "MM-LIQUIDITY"


class Bench:
    def __init__(self, *, brute_force: bool, state: LedgerState | None = None) -> None:
        self.state = state if state is not None else LedgerState()
        self.state.triggers.brute_force = brute_force
        self.position = 0
        self.at = T0
        self.fills = 0

    def step(self, message: Any) -> list[ev.Event]:
        self.position += 1
        fold.admit(self.state, message)
        return fold.step(self.state, message, self.position)

    def fill(self, account: str, side: str, quantity: Decimal, price: Decimal, instrument: str = INSTRUMENT) -> None:
        self.fills += 1
        self.step(Fill(fill_id=f"F{self.fills}", trade_id=f"T{self.fills}", account_id=account,
                       instrument=instrument, side=side, quantity=quantity, price=price, fee=Decimal(0),
                       fee_asset=None, margin_mode="cross", occurred_at=self.at))

    def fill_orders(self, decisions: list[ev.Event]) -> None:
        for order in decisions:
            if order.type != ev.LIQUIDATION_ORDER_ISSUED:
                continue
            p = order.payload
            quantity, price = Decimal(p["quantity"]), Decimal(p["mark"])
            self.fills += 1
            self.step(LiquidationFill(liquidation_id=p["liquidation_id"],
                                      fill_id=f"LF{self.fills}", account_id=p["account_id"],
                                      instrument=p["instrument"], side=p["side"], quantity=quantity, price=price,
                                      occurred_at=self.at))
            self.fill(MM, "buy" if p["side"] == "sell" else "sell", quantity, price, p["instrument"])


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
    scopes_p99 = sorted(scopes)[min(len(scopes) - 1, int(len(scopes) * 0.99))]
    counted = (
        NOT_COUNTED
        if COMPILED_IN_USE
        else f"median {statistics.median(scopes):.0f} p99 {scopes_p99:.0f} max {max(scopes):.0f}"
    )
    print(
        f"{name:<12} accounts {accounts:>7}  marks {len(ms):>4}  per mark: median {statistics.median(ms):8.2f} ms"
        f"  p99 {p99:8.2f} ms  max {ms[-1]:8.2f} ms  | scopes re-margined {counted}"
        f"  | decisions total {sum(figures['decisions']):.0f}"
        f" (max {max(figures['decisions']):.0f} in one mark)"
    )
    cpu = sorted(figures["cpu"])
    print(
        f"{'':<12} CPU time per mark (the same marks; wall time above counts other processes' turns too): "
        f"median {statistics.median(cpu):.2f} ms  p99 {cpu[min(len(cpu) - 1, int(len(cpu) * 0.99))]:.2f} ms"
    )


# ---------------------------------------------------------------------------------------------
# the options book

UNDERLYING = "BTC"
EXPIRIES = (("26MAR27", "2027-03-26T08:00:00Z"), ("25JUN27", "2027-06-25T08:00:00Z"))
STRIKES = range(40_000, 100_001, 5_000)  # 13 strikes
CHAIN_IV = Decimal("0.6")


def chain_parameters() -> Any:
    """The bundled document with its BTC options replaced by a chain of 52 (EXPIRIES x STRIKES x
    call and put); its BTC grid (the contract's example, bundled) margins portfolio accounts."""
    document = bundled_document()
    document["version"] = "bench-options-chain"
    instruments = [i for i in document["instruments"] if not (i["kind"] == "option" and i["underlying"] == "BTC")]
    for code, expiry in EXPIRIES:
        for strike in STRIKES:
            for kind, letter in (("call", "C"), ("put", "P")):
                instruments.append({"symbol": f"BTC-{code}-{strike}-{letter}", "kind": "option",
                                    "underlying": UNDERLYING, "option_type": kind, "strike": str(strike),
                                    "expiry": expiry, "settlement_asset": "USDT", "contract_size": "1"})
    document["instruments"] = instruments
    return load_parameters(document)


def option_mark(spec: Any, underlying: Decimal, at: datetime) -> Decimal:
    """Black-76 at the chain's volatility, to the cent, never below a cent (a mark is positive)."""
    value = option_value(spec, underlying, CHAIN_IV, at, Decimal(0))
    return max(Decimal("0.01"), value.quantize(Decimal("0.01")))


class OptionsBook:
    """The options book of ``--options``: the bench (its state), the chain and the marks it was
    built at."""

    def __init__(self, bench: Bench, options: list[Any], marks: dict[str, Decimal]) -> None:
        self.bench = bench
        self.options = options
        self.marks = marks


def build_options(accounts: int, underlying: Decimal, rng: random.Random, *, portfolio: bool = False) -> OptionsBook:
    """Accounts each short or long (70% short) one to three options of the chain, with collateral
    of 0.9 to 3 times the short options' initial margin (and the premium of the longs); the market
    maker takes the other side of each option in one fill at the end (so the book nets to zero).
    ``portfolio``: each account is put on the portfolio model before its first fill."""
    parameters = chain_parameters()
    bench = Bench(brute_force=False, state=LedgerState(parameters=parameters))
    options = [spec for spec in parameters.instruments if spec.kind == "option" and spec.underlying == UNDERLYING]
    bench.step(Mark(symbol=UNDERLYING, price=underlying, occurred_at=bench.at))
    marks = {spec.symbol: option_mark(spec, underlying, bench.at) for spec in options}
    for symbol, price in marks.items():
        bench.step(Mark(symbol=symbol, price=price, iv=CHAIN_IV, occurred_at=bench.at))
    bench.step(Deposit(transfer_id="dMM", account_id=MM, asset="USDT", amount=Decimal(10) ** 12,
                       occurred_at=bench.at))
    net: dict[str, Decimal] = {}
    rate = parameters.option_margin_rates(UNDERLYING)
    assert rate is not None
    for index in range(accounts):
        account = f"O{index:06d}"
        legs = []
        need = Decimal(0)
        for spec in rng.sample(options, rng.randint(1, 3)):
            quantity = Decimal(rng.randint(1, 50)) / 10
            short = rng.random() < 0.7
            price = marks[spec.symbol]
            need += quantity * (rate.initial_rate * underlying + price) if short else quantity * price
            legs.append((spec.symbol, "sell" if short else "buy", quantity, price))
        collateral = (need * Decimal(str(round(0.9 + 2.1 * rng.random(), 3)))).quantize(Decimal("0.01"))
        bench.step(Deposit(transfer_id=f"d{account}", account_id=account, asset="USDT", amount=collateral,
                           occurred_at=bench.at))
        if portfolio:
            bench.state.accounts[account].margin_model = "portfolio"
        for symbol, side, quantity, price in legs:
            bench.fill(account, side, quantity, price, symbol)
            net[symbol] = net.get(symbol, Decimal(0)) + (quantity if side == "buy" else -quantity)
    for symbol, quantity in sorted(net.items()):
        if quantity:
            bench.fill(MM, "sell" if quantity > 0 else "buy", abs(quantity), marks[symbol], symbol)
    return OptionsBook(bench, options, marks)


def float_floor(book: OptionsBook) -> Any:
    """A function that, given the underlying's price and the option marks (floats), computes every
    account's equity, maintenance and level in one vectorised numpy pass: the floor a mark costs."""
    import importlib

    np: Any = importlib.import_module("numpy")
    state = book.bench.state
    index_of = {spec.symbol: i for i, spec in enumerate(book.options)}
    accounts = sorted(a for a in state.accounts if not a.startswith("system:"))
    account_index = {a: i for i, a in enumerate(accounts)}
    rows = [(account_index[a], index_of[p.instrument], float(p.quantity))
            for a in accounts for p in state.accounts[a].positions.values() if p.quantity]
    owner = np.array([r[0] for r in rows])
    option = np.array([r[1] for r in rows])
    quantity = np.array([r[2] for r in rows])
    is_call = np.array([spec.option_type == "call" for spec in book.options])[option]
    short = quantity < 0
    size = np.abs(quantity)
    balance = np.array([float(state.accounts[a].balance("USDT")) for a in accounts])
    rates = state.parameters.option_margin_rates(UNDERLYING)
    assert rates is not None
    mr = float(rates.maintenance_rate)
    n = len(accounts)

    def evaluate(underlying: float, option_marks: Any) -> Any:
        mark = option_marks[option]
        per = np.where(is_call, mr * underlying, np.maximum(mr * underlying, mr * mark)) + mark
        maintenance = np.bincount(owner, weights=np.where(short, per * size, 0.0), minlength=n)
        equity = balance + np.bincount(owner, weights=quantity * mark, minlength=n)
        ratio = np.divide(maintenance, equity, out=np.full(n, np.inf), where=equity > 0)
        # Levels as the ledger classifies them: 0 healthy, 1 warning, 2 maintenance.
        return np.select([maintenance <= 0, ratio >= 1.0, ratio >= 0.8], [0, 2, 1], 0)

    return evaluate


def walk_options(
    book: OptionsBook, underlying: Decimal, marks: int, rng: random.Random, step_bp: float, *, with_floor: bool = True
) -> dict[str, dict[str, list[float]]]:
    """Marks of the underlying and of one option in turn (the option's own mark moved by the same
    law), each timed through fold.step; then the same sequence through the float floor (unless
    ``with_floor`` is False: its figures are the standard model's). Returns the figures by kind."""
    bench = book.bench
    figures: dict[str, dict[str, list[float]]] = {
        kind: {"ms": [], "cpu": [], "scopes": [], "decisions": []} for kind in ("underlying", "option")
    }
    option_marks = dict(book.marks)
    counted = [0]
    original = lifecycle._remargin

    def counting(*args: Any, **kwargs: Any) -> Any:
        counted[0] += 1
        return original(*args, **kwargs)

    sequence: list[tuple[str, str, Decimal]] = []
    lifecycle._remargin = counting
    try:
        for turn in range(2 * marks):
            move = Decimal(str(1 + rng.gauss(0, step_bp / 10_000)))
            if turn % 2 == 0:
                kind, symbol = "underlying", UNDERLYING
                underlying = (underlying * move).quantize(Decimal("0.01"))
                price = underlying
            else:
                kind, symbol = "option", rng.choice(book.options).symbol
                price = max(Decimal("0.01"), (option_marks[symbol] * move).quantize(Decimal("0.01")))
                option_marks[symbol] = price
            sequence.append((kind, symbol, price))
            bench.at += timedelta(seconds=1)
            bench.position += 1
            message = Mark(symbol=symbol, price=price, iv=None if kind == "underlying" else CHAIN_IV,
                           occurred_at=bench.at)
            fold.admit(bench.state, message)
            counted[0] = 0
            started, started_cpu = time.perf_counter(), time.process_time()
            decisions = fold.step(bench.state, message, bench.position)
            figures[kind]["ms"].append((time.perf_counter() - started) * 1000)
            figures[kind]["cpu"].append((time.process_time() - started_cpu) * 1000)
            figures[kind]["scopes"].append(counted[0])
            figures[kind]["decisions"].append(len(decisions))
            bench.fill_orders(decisions)
    finally:
        lifecycle._remargin = original
    accounts = sum(1 for account_id in bench.state.accounts if account_id.startswith("O"))
    for kind in ("underlying", "option"):
        report(f"{kind} mark", accounts, figures[kind])
    if not with_floor:
        return figures
    import importlib

    np: Any = importlib.import_module("numpy")
    evaluate = float_floor(book)
    index_of = {spec.symbol: i for i, spec in enumerate(book.options)}
    floats = np.array([float(book.marks[spec.symbol]) for spec in book.options])
    current = float(sequence[0][2]) if sequence else 0.0
    floor: list[float] = []
    for kind, symbol, price in sequence:
        if kind == "underlying":
            current = float(price)
        else:
            floats[index_of[symbol]] = float(price)
        started = time.perf_counter()
        evaluate(current, floats)
        floor.append((time.perf_counter() - started) * 1000)
    ordered = sorted(floor)
    floor_p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    print(f"{'float floor':<12} accounts {accounts:>7}  marks {len(floor):>4}  per mark (every account, one "
          f"vectorised numpy pass): median {statistics.median(floor):.2f} ms  p99 {floor_p99:.2f} ms")
    for kind in ("underlying", "option"):
        ms = sorted(figures[kind]["ms"])
        p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
        print(f"{'':<12} {kind} marks: ledger p99 / floor p99 = {p99 / floor_p99:.1f}")
    return figures


def portfolio_bands(accounts: int, marks: int, seed: int, step_bp: float) -> None:
    """``--options --portfolio`` (module docstring): the same walk from the same book, with the
    index's bands and by brute force."""
    scopes: dict[str, list[float]] = {}
    for name, brute in (("with bands", False), ("brute force", True)):
        book = build_options(accounts, Decimal(60_000), random.Random(seed), portfolio=True)
        book.bench.state.triggers.brute_force = brute
        print(f"-- portfolio accounts, {name}")
        figures = walk_options(book, Decimal(60_000), marks, random.Random(seed + 1), step_bp, with_floor=False)
        scopes[name] = figures["underlying"]["scopes"]
        sys.stdout.flush()
    banded, brute_scopes = scopes["with bands"], scopes["brute force"]
    if COMPILED_IN_USE:
        print(f"scopes re-margined per mark of the underlying: {NOT_COUNTED}")
        return
    print(
        f"scopes re-margined per mark of the underlying: with bands median {statistics.median(banded):.0f} "
        f"mean {statistics.fmean(banded):.1f}; without (every holder) median {statistics.median(brute_scopes):.0f} "
        f"mean {statistics.fmean(brute_scopes):.1f}"
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
    parser.add_argument("--options", action="store_true", help="the options book instead (module docstring)")
    parser.add_argument("--option-accounts", type=int, default=10_000)
    parser.add_argument("--portfolio", action="store_true", help="with --options: portfolio accounts, bands vs none")
    args = parser.parse_args()
    if args.options and args.portfolio:
        portfolio_bands(args.option_accounts, args.marks, args.seed, args.step_bp)
        return
    if args.options:
        started = time.perf_counter()
        book = build_options(args.option_accounts, Decimal(60_000), random.Random(args.seed))
        built = time.perf_counter() - started
        walk_options(book, Decimal(60_000), args.marks, random.Random(args.seed + 1), args.step_bp)
        print(f"{'':<12} (book of {len(book.options)} options built through fold.step in {built:.1f} s; "
              f"conservation {fold.conservation(book.bench.state)})")
        return
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
