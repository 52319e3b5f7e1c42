"""An account's HTML report (``clearing audit report ACCOUNT``): one self-contained file, readable
offline, with inline SVG charts drawn here (no scripts, no CDN).

The time series come from replaying the account's shard of the log with the domain fold: after
every event that can move the account's margin (its own events, marks of instruments it traded
or collateral it holds, parameter changes) the cross scope is evaluated with
``clearing.domain.models.scope_risk``: the same code the ledger decides with, so the report cannot
disagree with the ledger. Margin calls and liquidations are the decision events in the account's
stream. Numbers in tables are the exact decimal strings; only the SVG coordinates are floats.

Time on the charts is event time as the ledger's fold knows it: the latest ``occurred_at`` applied
so far in the shard's log. An event that arrives late (a liquidation execution stamped with its
order's time, recorded after later marks) moves the account at the time it was recorded in that
order, so the lines never run backwards; the tables show each event's own ``occurred_at``.

The period defaults to the account's own activity: from its first event to its last (by that
clock), not to the head of the log, where the account's history would be a sliver of the chart.

Portfolio margin and dynamic margin (issue 24). While the account's cross scope is on the
portfolio model, its grids are drawn as heatmaps (per underlying: the price moves across, the
volatility cells up, unchanged and down, then the extreme cells; each cell coloured by the book's
P&L in it, red for a loss, blue for a gain; the worst cell outlined and marked): at every margin
call decision of the period (at most ``GRID_MOMENTS_MAX``, the last ones), or, with none, at the
moments of its ``GRID_LARGEST_MAX`` largest initial margins. The figures are ``audit explain``'s
(``clearing.audit.grid``). And per underlying the account trades, dynamic margin's multiplier (and
raw multiplier) and EWMA volatility over time, one point per ``MarginRatesChanged`` of the log at
its ``sample_at``, drawn as steps (a multiplier holds until the next sample).
"""

from __future__ import annotations

import heapq
import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
from typing import Any

import sqlalchemy as sa

from clearing.audit import grid
from clearing.domain.fold import replay_event
from clearing.domain.models import scope_risk
from clearing.domain.numbers import LEDGER_CONTEXT, to_wire
from clearing.domain.state import INSURANCE_FUND_ACCOUNT, LedgerState
from clearing.store import queries

POINTS_MAX = 2_000  # per drawn series; more points than pixels only slow the browser down
EVENT_ROWS_MAX = 5_000  # rows in the events table; the report says how many were left out
PAYLOAD_CHARS_MAX = 400  # of one event's payload in the table

MARK_EVENT_TYPES = frozenset({"MarkRecorded", "FundingRateRecorded", "SettlementPriceRecorded"})
TRADE_EVENT_TYPES = frozenset({"FillRecorded", "LiquidationFillRecorded"})
CALL_EVENT_TYPES = frozenset({"MarginCallIssued", "MarginCallEscalated", "MarginCallResolved"})
LIQUIDATION_EVENT_TYPES = frozenset(
    {"LiquidationOrderIssued", "LiquidationFillRecorded", "AccountBankrupted", "PositionAutoDeleveraged"}
)
MARKER_COLOURS = {
    "MarginCallIssued": "#e69f00",
    "MarginCallEscalated": "#d55e00",
    "MarginCallResolved": "#009e73",
    "LiquidationOrderIssued": "#cc0000",
    "LiquidationFillRecorded": "#8b0000",
    "AccountBankrupted": "#000000",
    "PositionAutoDeleveraged": "#6a3d9a",
    "InsuranceFundDrawn": "#56b4e9",
}
SERIES_COLOURS = ("#0072b2", "#e69f00", "#cc0000", "#009e73", "#6a3d9a", "#56b4e9")


class ReportError(ValueError):
    """The report cannot be made as asked (unknown account, bad period)."""


@dataclass(frozen=True, slots=True)
class RiskPoint:
    position: int
    occurred_at: datetime  # the event's own time
    equity: Decimal
    initial_margin: Decimal
    maintenance_margin: Decimal
    margin_ratio: Decimal | None
    status: str
    at: datetime  # where it is drawn: the latest occurred_at folded so far (never earlier than the point before)


@dataclass(frozen=True, slots=True)
class MarkPoint:
    position: int
    occurred_at: datetime  # the fold's clock when it was applied (a mark applied late is stale: not drawn)
    price: Decimal


@dataclass(frozen=True, slots=True)
class FundPoint:
    position: int
    occurred_at: datetime
    balance: Decimal  # the insurance fund's, in the valuation asset


# The waterfall's events charted on the insurance fund's balance (of any account of the shard).
FUND_EVENT_TYPES = frozenset({"InsuranceFundDrawn", "PositionAutoDeleveraged"})


@dataclass(frozen=True, slots=True)
class QuantityPoint:
    """An option position's signed quantity after an event that moved it."""

    position: int
    occurred_at: datetime
    quantity: Decimal


@dataclass(frozen=True, slots=True)
class RatePoint:
    """One ``MarginRatesChanged`` of an underlying: its boundary and figures."""

    position: int
    sample_at: datetime
    volatility: Decimal
    raw_multiplier: Decimal
    multiplier: Decimal


@dataclass(frozen=True, slots=True)
class GridMoment:
    """The account's portfolio grids at one position of the log (``grid.scope_grids``'s figures)
    and why it was drawn (a margin call decision, or one of the largest requirements)."""

    position: int
    occurred_at: datetime
    reason: str
    initial_margin: Decimal
    grids: dict[str, Any]


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    position: int
    occurred_at: datetime
    type: str
    payload: dict[str, Any]


@dataclass(slots=True)
class AccountTimeline:
    account_id: str
    shard: int
    start: datetime | None
    end: datetime | None
    risk: list[RiskPoint] = field(default_factory=list)
    marks: dict[str, list[MarkPoint]] = field(default_factory=dict)
    option_positions: dict[str, list[QuantityPoint]] = field(default_factory=dict)  # by option
    markers: list[LoggedEvent] = field(default_factory=list)
    events: list[LoggedEvent] = field(default_factory=list)
    events_total: int = 0
    replayed: int = 0
    default_window: bool = False  # the period is the account's first to last event (none was given)
    fund: list[FundPoint] = field(default_factory=list)
    fund_events: list[LoggedEvent] = field(default_factory=list)  # draws and ADL steps, every account
    rates: dict[str, list[RatePoint]] = field(default_factory=dict)  # by underlying the account trades
    grid_moments: list[GridMoment] = field(default_factory=list)  # in log order
    margin_model: str = "standard"  # the cross scope's, at the end of the period
    valuation_asset: str = "USDT"  # of the parameters in force at the end


def parse_time(text: str) -> datetime:
    """An RFC 3339 time with a zone (``2026-11-23T12:00:00Z``); ReportError otherwise."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ReportError(f"{text!r} is not an RFC 3339 time such as 2026-11-23T12:00:00Z") from None
    if value.tzinfo is None:
        raise ReportError(f"{text!r} has no zone: add Z or an offset such as +00:00")
    return value


def _account_window(conn: sa.Connection, shard: int, stream: str) -> tuple[datetime, datetime] | None:
    """The clock (latest occurred_at of the shard so far) at the account's first and last event."""
    first, last = conn.execute(
        sa.text("SELECT min(position), max(position) FROM events WHERE stream = :s"), {"s": stream}
    ).one()
    if first is None:
        return None
    clock = sa.text("SELECT max(occurred_at) FROM events WHERE shard = :shard AND position <= :p")
    start = conn.execute(clock, {"shard": shard, "p": first}).scalar_one()
    end = conn.execute(clock, {"shard": shard, "p": last}).scalar_one()
    return start, end


WINDOW_END_PAST = timedelta(microseconds=1)  # a default period includes the account's last event


def build_timeline(
    engine: sa.Engine, account_id: str, *, start: datetime | None = None, end: datetime | None = None
) -> AccountTimeline:
    """Replay the account's shard and collect the series between ``start`` (inclusive) and
    ``end`` (exclusive), by the fold's clock (module docstring); a bound not given is the clock at
    the account's first (last) event. Events before ``start`` are folded too: the state needs them."""
    if start is not None and end is not None and end <= start:
        raise ReportError("the end of the period must be after its start")
    stream = f"account:{account_id}"
    with engine.connect() as conn:
        shard = queries.account_shard(conn, account_id)
        if shard is None:
            raise ReportError(f"no account {account_id!r} in the ledger")
        default_window = start is None and end is None
        if start is None or end is None:
            window = _account_window(conn, shard, stream)
            if window is not None:
                start = start if start is not None else window[0]
                end = end if end is not None else window[1] + WINDOW_END_PAST
        if start is not None and end is not None and end <= start:
            raise ReportError("the end of the period must be after its start (the account's activity is outside it)")
        timeline = AccountTimeline(account_id, shard, start, end, default_window=default_window)
        state = LedgerState()
        traded: set[str] = set()
        clock: datetime | None = None
        rates: dict[str, list[RatePoint]] = {}
        calls: list[GridMoment] = []
        largest: list[tuple[Decimal, int, GridMoment]] = []  # a min-heap of the largest requirements
        for position, event_stream, event_type, occurred_at, payload in queries.iter_shard_events(conn, shard):
            replay_event(state, event_type, payload)
            timeline.replayed += 1
            clock = occurred_at if clock is None or occurred_at > clock else clock
            in_window = (start is None or clock >= start) and (end is None or clock < end)
            if in_window:
                _follow_fund(timeline, state, position, clock, event_type, payload)
                if event_type == "MarginRatesChanged":
                    _record_rates(rates, position, payload)
            # An ADL step is logged on the counterparty's stream; it books the bankrupt account too.
            own_adl = event_type == "PositionAutoDeleveraged" and payload.get("bankrupt_account_id") == account_id
            if event_stream == stream or own_adl:
                relevant = True
                if event_type in TRADE_EVENT_TYPES:
                    instrument = str(payload.get("instrument"))
                    traded.add(instrument)
                    spec = state.parameters.instrument(instrument)
                    if spec is not None and spec.kind == "option":
                        # An option moves with its underlying: chart that mark too.
                        traded.add(spec.underlying_symbol)
                        if in_window:
                            _record_option(timeline, state, account_id, instrument, position, occurred_at)
                if in_window:
                    logged = LoggedEvent(position, occurred_at, event_type, payload)
                    timeline.events_total += 1
                    if len(timeline.events) < EVENT_ROWS_MAX:
                        timeline.events.append(logged)
                    if event_type in CALL_EVENT_TYPES or event_type in LIQUIDATION_EVENT_TYPES:
                        timeline.markers.append(logged)
            elif event_type == "SettlementPriceRecorded" and str(payload.get("symbol")) in timeline.option_positions:
                # The option expired and settled: the account's position in it closed.
                relevant = True
                if in_window:
                    symbol = str(payload.get("symbol"))
                    _record_option(timeline, state, account_id, symbol, position, occurred_at)
            elif event_type in MARK_EVENT_TYPES:
                symbol = str(payload.get("symbol"))
                account = state.accounts.get(account_id)
                relevant = symbol in traded or (account is not None and account.balance(symbol) != 0)
                mark = state.marks.get(symbol)
                if symbol in traded and in_window and event_type == "MarkRecorded" and mark is not None:
                    series = timeline.marks.setdefault(symbol, [])
                    # A stale mark is logged but not applied: draw what the ledger applied.
                    if not series or series[-1].price != mark.price:
                        series.append(MarkPoint(position, clock, mark.price))
            else:
                relevant = event_type == "RiskParametersChanged"
            account = state.accounts.get(account_id)
            if event_type == "MarginRatesChanged":
                # New rates move the requirements of every holder of the underlying, as a mark does.
                relevant = relevant or _holds_underlying(state, account, str(payload.get("underlying")))
            if relevant and in_window and account is not None:
                risk = scope_risk(state, account, "cross")
                if risk.underlyings:
                    is_call = event_stream == stream and event_type in GRID_CALL_TYPES
                    _record_grid(state, risk, position, occurred_at, event_type, payload, is_call, calls, largest)
                # The lifecycle's status (a call stays open until resolved; a bankrupt account
                # with nothing left to margin is still bankrupt), not the instantaneous class.
                lifecycle = account.margin.get("cross")
                timeline.risk.append(
                    RiskPoint(
                        position,
                        occurred_at,
                        risk.equity,
                        risk.initial_margin,
                        risk.maintenance_margin,
                        risk.margin_ratio,
                        lifecycle.status if lifecycle is not None else risk.status,
                        clock,
                    )
                )
        final = state.accounts.get(account_id)
        timeline.margin_model = final.margin_model if final is not None else "standard"
        timeline.valuation_asset = state.parameters.valuation_asset
    timeline.grid_moments = calls[-GRID_MOMENTS_MAX:] if calls else [m for _, _, m in sorted(largest, key=_by_position)]
    underlyings = {_underlying_of(state, symbol) for symbol in traded}
    timeline.rates = {u: points for u, points in sorted(rates.items()) if u in underlyings}
    return timeline


# Margin call decisions at which a portfolio account's grid is drawn (a resolution is drawn too:
# the grid that let the call go).
GRID_CALL_TYPES = CALL_EVENT_TYPES
GRID_MOMENTS_MAX = 6  # heatmaps of margin call decisions per report (the last ones)
GRID_LARGEST_MAX = 3  # without a call: the moments of the largest initial margins


def _by_position(item: tuple[Decimal, int, GridMoment]) -> int:
    return item[1]


def _underlying_of(state: LedgerState, symbol: str) -> str:
    spec = state.parameters.instrument(symbol)
    return spec.underlying_symbol if spec is not None else symbol


def _holds_underlying(state: LedgerState, account: Any, underlying: str) -> bool:
    if account is None:
        return False
    return any(
        position.quantity != 0 and _underlying_of(state, instrument) == underlying
        for (instrument, _mode), position in account.positions.items()
    )


def _record_rates(rates: dict[str, list[RatePoint]], position: int, payload: dict[str, Any]) -> None:
    points = rates.setdefault(str(payload["underlying"]), [])
    if len(points) < RATE_POINTS_MAX:
        points.append(
            RatePoint(
                position,
                parse_time(str(payload["sample_at"])),
                Decimal(str(payload["volatility"])),
                Decimal(str(payload["raw_multiplier"])),
                Decimal(str(payload["multiplier"])),
            )
        )


RATE_POINTS_MAX = 100_000  # samples kept per underlying (drawn downsampled to POINTS_MAX)


def _record_grid(
    state: LedgerState,
    risk: Any,
    position: int,
    occurred_at: datetime,
    event_type: str,
    payload: dict[str, Any],
    is_call: bool,
    calls: list[GridMoment],
    largest: list[tuple[Decimal, int, GridMoment]],
) -> None:
    """Keep the grids at a call decision, and at the largest requirements (``GRID_LARGEST_MAX``,
    the earliest of equal ones): the figures are built only for the moments kept."""
    if is_call:
        reason = f"{event_type} ({payload.get('level')})" if payload.get("level") else event_type
        calls.append(GridMoment(position, occurred_at, reason, risk.initial_margin, _grids(state, risk)))
        if len(calls) > GRID_MOMENTS_MAX:
            del calls[0]
        return
    if calls:
        return  # calls are drawn: the largest requirements are not needed
    if len(largest) >= GRID_LARGEST_MAX and risk.initial_margin <= largest[0][0]:
        return
    moment = GridMoment(position, occurred_at, "a largest initial margin", risk.initial_margin, _grids(state, risk))
    entry = (risk.initial_margin, position, moment)
    if len(largest) < GRID_LARGEST_MAX:
        heapq.heappush(largest, entry)
    else:
        heapq.heapreplace(largest, entry)


def _grids(state: LedgerState, risk: Any) -> dict[str, Any]:
    with localcontext(LEDGER_CONTEXT):
        found = grid.scope_grids(state, risk)
    if found is None:  # pragma: no cover - called only for a scope with grids
        raise ReportError("a portfolio scope without grids")
    return found


def _follow_fund(
    timeline: AccountTimeline,
    state: LedgerState,
    position: int,
    occurred_at: datetime,
    event_type: str,
    payload: dict[str, Any],
) -> None:
    """The insurance fund's balance where it changed, and the draws and ADL steps (bounded as
    the event rows are)."""
    fund = state.accounts.get(INSURANCE_FUND_ACCOUNT)
    balance = fund.balance(state.parameters.valuation_asset) if fund is not None else Decimal(0)
    if not timeline.fund or timeline.fund[-1].balance != balance:
        timeline.fund.append(FundPoint(position, occurred_at, balance))
    if event_type in FUND_EVENT_TYPES and len(timeline.fund_events) < EVENT_ROWS_MAX:
        timeline.fund_events.append(LoggedEvent(position, occurred_at, event_type, payload))


def _record_option(
    timeline: AccountTimeline, state: LedgerState, account_id: str, symbol: str, position: int, at: datetime
) -> None:
    account = state.accounts.get(account_id)
    held = account.positions.get((symbol, "cross")) if account is not None else None
    quantity = held.quantity if held is not None else Decimal(0)
    timeline.option_positions.setdefault(symbol, []).append(QuantityPoint(position, at, quantity))


# ------------------------------------------------------------------------------------------------
# downsampling


def downsample_indices(values: Sequence[float], points_max: int, keep: Sequence[int] = ()) -> list[int]:
    """Indices of at most about ``points_max`` points that keep the shape of the series: the first
    and last, the lowest and highest of each bucket (so spikes survive) and the ``keep`` indices
    (e.g. where the status changed)."""
    count = len(values)
    if count <= points_max:
        return list(range(count))
    buckets = max(1, (points_max - 2 - len(keep)) // 2)
    chosen = {0, count - 1, *(i for i in keep if 0 <= i < count)}
    size = count / buckets
    for bucket in range(buckets):
        low, high = int(bucket * size), min(count, int((bucket + 1) * size))
        if low >= high:
            continue
        window = range(low, high)
        chosen.add(min(window, key=values.__getitem__))
        chosen.add(max(window, key=values.__getitem__))
    return sorted(chosen)


# ------------------------------------------------------------------------------------------------
# SVG


@dataclass(frozen=True, slots=True)
class Series:
    label: str
    colour: str
    points: list[tuple[float, float]]  # (epoch seconds, value)
    dashed: bool = False


@dataclass(frozen=True, slots=True)
class VerticalMarker:
    at: float  # epoch seconds
    colour: str
    title: str


CHART_WIDTH = 1100
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 90, 20, 28, 34
Y_TICKS = 5
X_TICKS = 6
LEGEND_ITEM_WIDTH = 150


def _axis_number(value: float) -> str:
    magnitude = abs(value)
    if magnitude >= 1e6:
        return f"{value / 1e6:.2f}M"
    if magnitude >= 1e4:
        return f"{value / 1e3:.1f}k"
    if magnitude >= 100:
        return f"{value:.0f}"
    return f"{value:.4g}"


def _nice_ticks(low: float, high: float, count: int) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) inside [low, high]."""
    span = high - low
    raw = span / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(0.0 if abs(value) < step * 1e-9 else value)
        value += step
    return ticks


def _axis_time(seconds: float, span: float) -> str:
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%H:%M:%S" if span < 86_400 else "%m-%d %H:%M")


def svg_chart(
    title: str,
    series: Sequence[Series],
    markers: Sequence[VerticalMarker] = (),
    *,
    height: int = 320,
    x_range: tuple[float, float] | None = None,
) -> str:
    """A line chart as an inline ``<svg>``: time on x (``x_range`` so that stacked charts line
    up), one polyline per series."""
    everything = [point for line in series for point in line.points]
    if not everything:
        return f'<p class="empty">{html.escape(title)}: no data in this period.</p>'
    xs = [x for x, _ in everything] + [marker.at for marker in markers]
    ys = [y for _, y in everything]
    x0, x1 = x_range if x_range is not None else (min(xs), max(xs))
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    pad = (y1 - y0) * 0.05 or abs(y1) * 0.05 or 1.0
    y0, y1 = y0 - pad, y1 + pad
    plot_w = CHART_WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = height - MARGIN_TOP - MARGIN_BOTTOM

    def px(x: float) -> float:
        return MARGIN_LEFT + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return MARGIN_TOP + (y1 - y) / (y1 - y0) * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {CHART_WIDTH} {height}" '
        f'width="{CHART_WIDTH}" height="{height}" role="img" aria-label="{html.escape(title)}">',
        f'<text x="{MARGIN_LEFT}" y="18" class="title">{html.escape(title)}</text>',
        f'<rect x="{MARGIN_LEFT}" y="{MARGIN_TOP}" width="{plot_w}" height="{plot_h}" class="plot"/>',
    ]
    for value in _nice_ticks(y0, y1, Y_TICKS):
        y = py(value)
        grid = "zero" if value == 0 else "grid"
        parts.append(f'<line x1="{MARGIN_LEFT}" x2="{MARGIN_LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" class="{grid}"/>')
        parts.append(f'<text x="{MARGIN_LEFT - 6}" y="{y + 4:.1f}" class="ylabel">{_axis_number(value)}</text>')
    for tick in range(X_TICKS + 1):
        value = x0 + (x1 - x0) * tick / X_TICKS
        x = px(value)
        anchor = "start" if tick == 0 else "end" if tick == X_TICKS else "middle"
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{MARGIN_TOP}" y2="{MARGIN_TOP + plot_h}" class="grid"/>')
        parts.append(
            f'<text x="{x:.1f}" y="{height - 12}" class="xlabel" text-anchor="{anchor}">'
            f"{_axis_time(value, x1 - x0)}</text>"
        )
    for marker in markers:
        x = px(marker.at)
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{MARGIN_TOP}" y2="{MARGIN_TOP + plot_h}" stroke="{marker.colour}" '
            f'class="marker"><title>{html.escape(marker.title)}</title></line>'
        )
    for line in series:
        if not line.points:
            continue
        coordinates = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in line.points)
        dash = ' stroke-dasharray="6 4"' if line.dashed else ""
        parts.append(
            f'<polyline fill="none" stroke="{line.colour}" stroke-width="1.8"{dash} points="{coordinates}">'
            f"<title>{html.escape(line.label)}</title></polyline>"
        )
    # The legend sits on the title line, right-aligned, so it never covers a line.
    legend_x = CHART_WIDTH - MARGIN_RIGHT - LEGEND_ITEM_WIDTH * len(series)
    for index, line in enumerate(series):
        x = legend_x + LEGEND_ITEM_WIDTH * index
        parts.append(f'<rect x="{x}" y="11" width="14" height="4" fill="{line.colour}"/>')
        parts.append(f'<text x="{x + 20}" y="18" class="legend">{html.escape(line.label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------------
# heatmaps of the portfolio grid

HEATMAP_CELL_WIDTH, HEATMAP_CELL_HEIGHT = 84, 34
HEATMAP_LEFT, HEATMAP_TOP, HEATMAP_BOTTOM, HEATMAP_GAP = 96, 62, 40, 24
LOSS_RGB, GAIN_RGB, NEUTRAL_RGB = (215, 48, 39), (69, 117, 180), (255, 255, 255)


def heat_colour(value: float, scale: float) -> str:
    """A cell's fill: white at 0, towards red for a loss and blue for a gain, full at |value| =
    ``scale`` (the largest |P&L| of the grid, so each grid uses its whole range)."""
    share = 0.0 if scale <= 0 else max(-1.0, min(1.0, value / scale))
    end = LOSS_RGB if share < 0 else GAIN_RGB
    weight = abs(share)
    rgb = [round(n + (e - n) * weight) for n, e in zip(NEUTRAL_RGB, end, strict=True)]
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def svg_heatmap(title: str, figures: dict[str, Any], valuation_asset: str, subtitle: str = "") -> str:
    """One underlying's grid (``grid.underlying_figures``) as an inline ``<svg>``: the price moves
    across, the volatility cells down, then the extreme cells after a gap, each coloured by the
    book's P&L in it (an extreme cell by its weighted P&L, what counts), the worst outlined and
    marked. Every cell carries its exact figures in ``<title>`` and ``data-`` attributes."""
    moves: list[str] = figures["moves"]
    volatilities: list[str] = figures["volatility_cells"]
    extremes: list[dict[str, Any]] = figures["extreme_cells"]
    cells = {(c["move"], c["volatility"]): c for c in figures["cells"]}
    shown = [float(c["pnl"]) for c in figures["cells"]] + [float(c["weighted_pnl"]) for c in extremes]
    scale = max((abs(v) for v in shown), default=0.0)
    width = (
        HEATMAP_LEFT
        + HEATMAP_CELL_WIDTH * len(moves)
        + (HEATMAP_GAP + HEATMAP_CELL_WIDTH * len(extremes) if extremes else 0)
        + MARGIN_RIGHT
    )
    height = HEATMAP_TOP + HEATMAP_CELL_HEIGHT * len(volatilities) + HEATMAP_BOTTOM
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart heatmap" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{html.escape(title)}" '
        f'data-underlying="{html.escape(figures["underlying"])}">',
        f'<text x="{HEATMAP_LEFT}" y="16" class="title">{html.escape(title)}</text>',
        f'<text x="{HEATMAP_LEFT}" y="33" class="legend">{html.escape(subtitle)}</text>',
        f'<text x="{HEATMAP_LEFT}" y="50" class="legend">price move of {html.escape(figures["underlying"])} '
        f"(range {figures['price_range']} x multiplier {figures['multiplier']} = {figures['scaled_price_range']})"
        "; P&amp;L of the book in "
        f"{html.escape(valuation_asset)}, red a loss, blue a gain; the worst cell outlined</text>",
    ]

    def cell_svg(x: float, y: float, cell: dict[str, Any], value: str, label: str) -> None:
        worst = bool(cell["worst"])
        tip = f"move {cell['move']}, volatility {cell['volatility']}: P&L {cell['pnl']}"
        if cell.get("extreme"):
            tip += f" x weight {cell['weight']} = {cell['weighted_pnl']}"
        if worst:
            tip += " (the worst cell)"
        attributes = f'data-move="{cell["move"]}" data-volatility="{cell["volatility"]}" data-pnl="{cell["pnl"]}"' + (
            f' data-weighted-pnl="{cell["weighted_pnl"]}"' if cell.get("extreme") else ""
        )
        parts.append(
            f'<g class="cell{" worst" if worst else ""}" {attributes}><title>{html.escape(tip)}</title>'
            f'<rect x="{x}" y="{y}" width="{HEATMAP_CELL_WIDTH}" height="{HEATMAP_CELL_HEIGHT}" '
            f'fill="{heat_colour(float(value), scale)}"'
            + (' stroke="#000000" stroke-width="3"' if worst else ' stroke="#ffffff" stroke-width="1"')
            + "/>"
            f'<text x="{x + HEATMAP_CELL_WIDTH / 2}" y="{y + HEATMAP_CELL_HEIGHT / 2 + 4}" class="cellvalue" '
            f'text-anchor="middle">{html.escape(label)}</text></g>'
        )

    for row, volatility in enumerate(volatilities):
        y = HEATMAP_TOP + HEATMAP_CELL_HEIGHT * row
        parts.append(
            f'<text x="{HEATMAP_LEFT - 6}" y="{y + HEATMAP_CELL_HEIGHT / 2 + 4}" class="ylabel">'
            f"vol {html.escape(volatility)}</text>"
        )
        for column, move in enumerate(moves):
            cell = cells[(move, volatility)]
            x = HEATMAP_LEFT + HEATMAP_CELL_WIDTH * column
            label = _axis_number(float(cell["pnl"])) + (" ✕" if cell["worst"] else "")
            cell_svg(x, y, cell, cell["pnl"], label)
    label_y = HEATMAP_TOP + HEATMAP_CELL_HEIGHT * len(volatilities) + 16
    for column, move in enumerate(moves):
        centre = HEATMAP_LEFT + HEATMAP_CELL_WIDTH * column + HEATMAP_CELL_WIDTH / 2
        parts.append(
            f'<text x="{centre}" y="{label_y}" class="xlabel" text-anchor="middle">{html.escape(move)}</text>'
        )
    start = HEATMAP_LEFT + HEATMAP_CELL_WIDTH * len(moves) + HEATMAP_GAP
    unchanged_row = volatilities.index("unchanged") if "unchanged" in volatilities else 0
    for column, cell in enumerate(extremes):
        x = start + HEATMAP_CELL_WIDTH * column
        y = HEATMAP_TOP + HEATMAP_CELL_HEIGHT * unchanged_row
        label = _axis_number(float(cell["weighted_pnl"])) + (" ✕" if cell["worst"] else "")
        cell_svg(x, y, cell, cell["weighted_pnl"], label)
        parts.append(
            f'<text x="{x + HEATMAP_CELL_WIDTH / 2}" y="{label_y}" class="xlabel" text-anchor="middle">'
            f"{html.escape(cell['move'])} x{html.escape(cell['weight'])}</text>"
        )
    if extremes:
        # Below the extreme cells' own labels: the legend line above runs across the whole width.
        parts.append(f'<text x="{start}" y="{label_y + 16}" class="legend">extreme cells (weighted)</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _grid_section(timeline: AccountTimeline, valuation_asset: str) -> str:
    if not timeline.grid_moments:
        return ""
    out = [
        "<h2>Portfolio grids</h2>",
        '<p class="meta">The cross scope on the portfolio model: each underlying\'s grid of scenarios at '
        + ("its margin call decisions" if "Margin" in timeline.grid_moments[0].reason else "its largest requirements")
        + " in the period. A cell is the book's P&amp;L when the underlying moves by the column's move and the "
        "options' volatility by the row's cell; the outlined cell (✕) is the worst, whose loss is the "
        "requirement W (clearing audit explain gives the arithmetic).</p>",
    ]
    for moment in timeline.grid_moments:
        for figures in moment.grids["grids"]:
            worst = figures["worst_cell"]
            named = f"move {worst['move']} {worst['volatility']}" + (" (extreme)" if worst.get("extreme") else "")
            title = f"{figures['underlying']} at position {moment.position}, {moment.occurred_at.isoformat()}"
            subtitle = (
                f"{moment.reason}: IM {figures['initial_margin']}, MM {figures['maintenance_margin']}, "
                f"worst cell {named}"
            )
            out.append(svg_heatmap(title, figures, valuation_asset, subtitle))
    return "\n".join(out)


def _step_points(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """A value that holds until the next point: each change drawn as a vertical step."""
    stepped: list[tuple[float, float]] = []
    for x, y in points:
        if stepped:
            stepped.append((x, stepped[-1][1]))
        stepped.append((x, y))
    return stepped


def _rates_charts(timeline: AccountTimeline, x_range: tuple[float, float] | None) -> list[str]:
    charts = []
    for underlying, points in timeline.rates.items():
        kept = [points[i] for i in downsample_indices([float(p.multiplier) for p in points], POINTS_MAX)]
        at = [_seconds(p.sample_at) for p in kept]
        charts.append(
            svg_chart(
                f"{underlying}: dynamic margin multiplier in force (raw multiplier dashed)",
                [
                    Series(
                        "multiplier",
                        SERIES_COLOURS[2],
                        _step_points([(x, float(p.multiplier)) for x, p in zip(at, kept, strict=True)]),
                    ),
                    Series(
                        "raw multiplier",
                        SERIES_COLOURS[1],
                        _step_points([(x, float(p.raw_multiplier)) for x, p in zip(at, kept, strict=True)]),
                        dashed=True,
                    ),
                ],
                height=220,
                x_range=x_range,
            )
        )
        charts.append(
            svg_chart(
                f"{underlying}: EWMA volatility of its marks (per sample period)",
                [
                    Series(
                        "volatility",
                        SERIES_COLOURS[0],
                        [(x, float(p.volatility)) for x, p in zip(at, kept, strict=True)],
                    )
                ],
                height=200,
                x_range=x_range,
            )
        )
    return charts


# ------------------------------------------------------------------------------------------------
# HTML


def _seconds(moment: datetime) -> float:
    return moment.timestamp()


def _risk_series(points: list[RiskPoint]) -> list[Series]:
    equity = [float(point.equity) for point in points]
    changes = [i for i in range(1, len(points)) if points[i].status != points[i - 1].status]
    chosen = [points[i] for i in downsample_indices(equity, POINTS_MAX, changes)]
    at = [_seconds(point.at) for point in chosen]
    return [
        Series("equity", SERIES_COLOURS[0], [(x, float(p.equity)) for x, p in zip(at, chosen, strict=True)]),
        Series(
            "initial margin",
            SERIES_COLOURS[1],
            [(x, float(p.initial_margin)) for x, p in zip(at, chosen, strict=True)],
            dashed=True,
        ),
        Series(
            "maintenance margin",
            SERIES_COLOURS[2],
            [(x, float(p.maintenance_margin)) for x, p in zip(at, chosen, strict=True)],
            dashed=True,
        ),
    ]


def _mark_series(symbol: str, points: list[MarkPoint], colour: str) -> Series:
    prices = [float(point.price) for point in points]
    chosen = [points[i] for i in downsample_indices(prices, POINTS_MAX)]
    return Series(f"{symbol} mark", colour, [(_seconds(p.occurred_at), float(p.price)) for p in chosen])


def _fund_series(points: list[FundPoint]) -> Series:
    balances = [float(point.balance) for point in points]
    chosen = [points[i] for i in downsample_indices(balances, POINTS_MAX)]
    return Series("insurance fund", SERIES_COLOURS[3], [(_seconds(p.occurred_at), float(p.balance)) for p in chosen])


def _markers(events: list[LoggedEvent]) -> list[VerticalMarker]:
    return [
        VerticalMarker(
            _seconds(event.occurred_at),
            MARKER_COLOURS.get(event.type, "#444444"),
            f"{event.type} at position {event.position}, {event.occurred_at.isoformat()}",
        )
        for event in events
    ]


def _cell(value: Any) -> str:
    if value is None:
        return '<td class="none">-</td>'
    if isinstance(value, Decimal):
        value = to_wire(value)
    return f"<td>{html.escape(str(value))}</td>"


def _payload_text(payload: dict[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(", ", ": "))
    return text if len(text) <= PAYLOAD_CHARS_MAX else text[: PAYLOAD_CHARS_MAX - 1] + "…"


STYLE = """
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #1a1a1a; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.meta { color: #555; margin-bottom: 16px; }
table { border-collapse: collapse; font-size: 12px; }
th, td { border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; position: sticky; top: 0; }
td.num, .summary td { font-variant-numeric: tabular-nums; }
td.none { color: #999; }
tr.call td { background: #fff4df; } tr.liquidation td { background: #fde4e4; }
.chart { display: block; margin: 8px 0 16px; max-width: 100%; height: auto; }
.chart .title { font-weight: 600; font-size: 14px; fill: #1a1a1a; }
.chart .plot { fill: #fcfcfc; stroke: #bbb; }
.chart .grid { stroke: #e6e6e6; stroke-width: 1; }
.chart .ylabel { font-size: 11px; text-anchor: end; fill: #555; }
.chart .xlabel { font-size: 11px; fill: #555; }
.chart .zero { stroke: #888; stroke-width: 1; }
.chart .legend { font-size: 12px; fill: #1a1a1a; }
.chart .marker { stroke-width: 1.5; stroke-dasharray: 2 3; }
.heatmap .cellvalue { font-size: 11px; fill: #1a1a1a; }
.key span { display: inline-block; margin-right: 14px; }
.key i { display: inline-block; width: 10px; height: 10px; margin-right: 4px; vertical-align: middle; }
code { font-size: 11px; word-break: break-all; }
p.empty { color: #777; font-style: italic; }
"""


def render_html(timeline: AccountTimeline, *, generated_at: datetime | None = None) -> str:
    """The report as one HTML document (inline CSS and SVG; nothing loaded from anywhere)."""
    account = html.escape(timeline.account_id)
    period = (
        f"{timeline.start.isoformat() if timeline.start else 'the start of the log'} to "
        f"{timeline.end.isoformat() if timeline.end else 'the head of the log'}"
        + (" (the account's first to last event; --from and --to choose another)" if timeline.default_window else "")
    )
    last = timeline.risk[-1] if timeline.risk else None
    summary_rows = [
        ("account", timeline.account_id),
        ("shard", timeline.shard),
        ("period", period),
        ("events of the account in the period", timeline.events_total),
        ("events replayed", timeline.replayed),
        (
            "margin calls / liquidation events",
            f"{sum(e.type in CALL_EVENT_TYPES for e in timeline.markers)} / "
            f"{sum(e.type in LIQUIDATION_EVENT_TYPES for e in timeline.markers)}",
        ),
        (
            "insurance fund draws / ADL steps in the shard",
            f"{sum(e.type == 'InsuranceFundDrawn' for e in timeline.fund_events)} / "
            f"{sum(e.type == 'PositionAutoDeleveraged' for e in timeline.fund_events)}",
        ),
    ]
    summary_rows.append(("margin model at the end", timeline.margin_model))
    if last is not None:
        summary_rows += [
            ("equity at the end", last.equity),
            ("initial margin at the end", last.initial_margin),
            ("maintenance margin at the end", last.maintenance_margin),
            ("margin ratio at the end", last.margin_ratio),
            ("status at the end", last.status),
            ("as of log position", last.position),
        ]
    markers = _markers(timeline.markers)
    times = (
        [_seconds(p.at) for p in timeline.risk]
        + [_seconds(p.occurred_at) for points in timeline.option_positions.values() for p in points]
        + [m.at for m in markers]
        + [_seconds(p.occurred_at) for points in timeline.marks.values() for p in points]
        + [_seconds(p.sample_at) for points in timeline.rates.values() for p in points]
    )
    x_range = (min(times), max(times)) if times else None
    charts = [
        svg_chart(
            "Cross equity vs initial and maintenance margin",
            _risk_series(timeline.risk),
            markers,
            height=360,
            x_range=x_range,
        )
    ]
    charts.append(
        svg_chart(
            "Insurance fund balance, with every draw and auto-deleveraging step",
            [_fund_series(timeline.fund)],
            _markers(timeline.fund_events),
            height=220,
            x_range=x_range,
        )
    )
    if timeline.option_positions:
        charts.append(
            svg_chart(
                "Option positions (contracts, negative = short)",
                [
                    Series(
                        symbol,
                        SERIES_COLOURS[index % len(SERIES_COLOURS)],
                        [(_seconds(p.occurred_at), float(p.quantity)) for p in points],
                    )
                    for index, (symbol, points) in enumerate(sorted(timeline.option_positions.items()))
                ],
                markers,
                height=260,
                x_range=x_range,
            )
        )
    for index, (symbol, points) in enumerate(sorted(timeline.marks.items())):
        colour = SERIES_COLOURS[index % len(SERIES_COLOURS)]
        charts.append(
            svg_chart(
                f"{symbol} mark price", [_mark_series(symbol, points, colour)], markers, height=220, x_range=x_range
            )
        )
    charts += _rates_charts(timeline, x_range)
    grids = _grid_section(timeline, timeline.valuation_asset)
    key = "".join(
        f'<span><i style="background:{colour}"></i>{html.escape(name)}</span>'
        for name, colour in MARKER_COLOURS.items()
    )
    decision_rows = "\n".join(
        f'<tr class="{"call" if e.type in CALL_EVENT_TYPES else "liquidation"}">{_cell(e.position)}'
        f"{_cell(e.occurred_at.isoformat())}{_cell(e.type)}{_cell(e.payload.get('level'))}"
        f"{_cell(e.payload.get('margin_ratio'))}{_cell(e.payload.get('equity'))}"
        f"{_cell(e.payload.get('instrument'))}{_cell(e.payload.get('quantity'))}</tr>"
        for e in timeline.markers
    )
    event_rows = "\n".join(
        f'<tr class="{_row_class(e.type)}">{_cell(e.position)}{_cell(e.occurred_at.isoformat())}{_cell(e.type)}'
        f"<td><code>{html.escape(_payload_text(e.payload))}</code></td></tr>"
        for e in timeline.events
    )
    left_out = timeline.events_total - len(timeline.events)
    generated = (generated_at or datetime.now(UTC)).isoformat(timespec="seconds")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Account report {account}</title>
<style>{STYLE}</style></head>
<body>
<h1>Account {account}</h1>
<div class="meta">Replayed from the event log of shard {timeline.shard}; generated {generated}.
Figures in tables are exact; charts are drawn from them.</div>
<table class="summary">{"".join(f"<tr><th>{html.escape(name)}</th>{_cell(value)}</tr>" for name, value in summary_rows)}
</table>
<h2>Margin over time</h2>
<div class="key">{key}</div>
{"".join(charts)}
{grids}
<h2>Margin calls and liquidations ({len(timeline.markers)})</h2>
{
        "<table><tr><th>position</th><th>occurred at</th><th>event</th><th>level</th>"
        "<th>margin ratio</th><th>equity</th><th>instrument</th><th>quantity</th></tr>" + decision_rows + "</table>"
        if timeline.markers
        else '<p class="empty">None in this period.</p>'
    }
<h2>Events of the account ({timeline.events_total})</h2>
{
        f'<p class="empty">The first {len(timeline.events)} are listed; {left_out} more are in the log.</p>'
        if left_out
        else ""
    }
<table><tr><th>position</th><th>occurred at</th><th>type</th><th>payload</th></tr>
{event_rows}
</table>
</body></html>
"""


def _row_class(event_type: str) -> str:
    if event_type in CALL_EVENT_TYPES:
        return "call"
    if event_type in LIQUIDATION_EVENT_TYPES:
        return "liquidation"
    return ""


def write_report(
    engine: sa.Engine, account_id: str, output: Any, *, start: datetime | None = None, end: datetime | None = None
) -> AccountTimeline:
    """Build the account's timeline and write the HTML report to ``output`` (a path)."""
    from pathlib import Path

    timeline = build_timeline(engine, account_id, start=start, end=end)
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(timeline), encoding="utf-8")
    return timeline
