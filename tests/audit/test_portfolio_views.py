"""Auditors and the back office see the grid (issue 24), on a log the ledger wrote: ``audit explain``
of a portfolio account's margin call (the grid with the worst cell marked, the arithmetic to the
requirement), of a dynamic-margin sample and of margin-model requests; ``account show --json`` and
the API's account view (the model, the worst cell per underlying, the multiplier in force), equal
as of the head and live; the projections equal to a fresh replay; the report's heatmap and its
multiplier and volatility chart.

The market (tests/integration/test_margin_models_e2e.py's, without the broker): BTC's dynamic
margin samples hourly (lambda 0.9, sigma_0 0.02, reference 0.02, buffer 0.25). A holds 80 USDT and
P 1,600 and Q 10,000, each long 1 BTCUSDT at 10,000 (B short all three). P asks for the portfolio model at 12:31:
its grid is 10,000 x m per cell, the worst -1,600 at m = -0.16 (up: the first of three equal
cells), extremes -3,300 x 0.35 = -1,155 and +5,000; W = 1,600, no short option (S = 0), IM = 1,600
= equity: approved, MM 1,280, a warning (0.8). A asks too and is rejected (80 < 1,600). 13:00's
sample (S_0 = 100) sets the multiplier to 1.25: P's range 0.2, worst -2,000, MM 1,600 = equity: a
maintenance call. 14:00's (S_1 = 110, sigma 0.035614646389) sets 1.78073231945: range
0.16 x 1.78073231945 = 0.284917171112, worst 10,000 x -0.284917171112 = -2,849.17171112. Q
switches too and is never called (MM 2,279.3373689 at most, against 10,000)."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from typing import Any

import pytest
import sqlalchemy as sa

from clearing.audit.explain import explain_any
from clearing.domain import events as ev
from clearing.domain.params import bundled_document
from clearing.engine.ledger import Ledger
from clearing.simulate import Message
from clearing.store.db import make_engine
from tests.api.ledger_data import records_of

pytestmark = [pytest.mark.integration]

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)  # on an hour boundary


def at(seconds: int) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def deposit(account: str, amount: str, seconds: int) -> Message:
    return Message("transfers", account, {"type": "deposit", "transfer_id": f"d-{account}-{seconds}",
                                          "account_id": account, "asset": "USDT", "amount": amount,
                                          "occurred_at": at(seconds)})  # fmt: skip


def fill(account: str, side: str, fid: str, trade: str, seconds: int) -> Message:
    return Message("fills", account, {"type": "fill", "fill_id": fid, "trade_id": trade, "account_id": account,
                                      "instrument": "BTCUSDT", "side": side, "quantity": "1", "price": "10000",
                                      "fee": "0", "fee_asset": "USDT", "occurred_at": at(seconds)})  # fmt: skip


def mark(symbol: str, price: str, seconds: int) -> Message:
    return Message("marks", symbol, {"type": "mark", "symbol": symbol, "price": price, "occurred_at": at(seconds)})


def model_request(account: str, model: str, rid: str, seconds: int) -> Message:
    return Message("transfers", account, {"type": "margin_model", "request_id": rid, "account_id": account,
                                          "model": model, "occurred_at": at(seconds)})  # fmt: skip


def phases() -> list[list[Message]]:
    document = copy.deepcopy(bundled_document())
    document["version"] = "views-e2e.1"
    document["dynamic_margin"] = [
        {"underlying": "BTC", "sample_seconds": 3600, "lambda": "0.9", "initial_volatility": "0.02",
         "reference_volatility": "0.02", "multiplier_floor": "1", "multiplier_cap": "3", "release_buffer": "0.25"}
    ]  # fmt: skip
    return [
        [Message("admin", "params", {"type": "risk_parameters", "parameters": document, "occurred_at": at(0)})],
        [deposit("A", "80", 60), deposit("P", "1600", 60), deposit("Q", "10000", 60), deposit("B", "100000", 60)],
        [fill("A", "buy", "a1", "T1", 120), fill("B", "sell", "b1", "T1", 120),
         fill("P", "buy", "p1", "T2", 120), fill("B", "sell", "b2", "T2", 120),
         fill("Q", "buy", "q1", "T3", 120), fill("B", "sell", "b3", "T3", 120)],
        [mark("BTCUSDT", "10000", 1800), mark("BTC", "100", 1800)],
        [model_request("P", "portfolio", "S-1", 1860), model_request("A", "portfolio", "S-2", 1870),
         model_request("Q", "portfolio", "S-3", 1880)],
        [deposit("Z", "1", 4200)],
        [mark("BTC", "110", 4800)],
        [deposit("Z", "1", 7500)],
    ]  # fmt: skip


@pytest.fixture(scope="module")
def views_db(pg_server) -> Iterator[sa.Engine]:  # type: ignore[no-untyped-def]
    from clearing.store.db import upgrade

    name = f"clearing_test_views_{uuid.uuid4().hex[:12]}"
    pg_server.create_database(name)
    try:
        url = pg_server.url(name)
        upgrade(url)
        ledger = Ledger(make_engine(url, role="clearing_app"))
        ledger.load()
        batches = phases()
        records = records_of([message for batch in batches for message in batch])  # offsets per topic
        start = 0
        for batch in batches:  # one ledger batch per phase
            ledger.process(records[start : start + len(batch)])
            start += len(batch)
        ledger.engine.dispose()
        owner = make_engine(url)
        yield owner
        owner.dispose()
    finally:
        pg_server.drop_database(name)


def rows(engine: sa.Engine, *types: str) -> list[tuple[int, str, dict[str, Any]]]:
    with engine.connect() as conn:
        found = conn.execute(
            sa.text("SELECT position, type, payload FROM events WHERE type = ANY(:t) ORDER BY position"),
            {"t": list(types)},
        )
        return [(int(row.position), row.type, dict(row.payload)) for row in found]


def test_the_market_decided_what_the_views_explain(views_db: sa.Engine) -> None:
    models = rows(views_db, ev.MARGIN_MODEL_CHANGED, ev.MARGIN_MODEL_REJECTED)
    assert [(t, p["account_id"]) for _, t, p in models] == [
        (ev.MARGIN_MODEL_CHANGED, "P"), (ev.MARGIN_MODEL_REJECTED, "A"), (ev.MARGIN_MODEL_CHANGED, "Q"),
    ]  # fmt: skip
    rates = rows(views_db, ev.MARGIN_RATES_CHANGED)
    assert [p["multiplier"] for _, _, p in rates] == ["1.25", "1.78073231945"]
    calls = rows(views_db, ev.MARGIN_CALL_ISSUED, ev.MARGIN_CALL_ESCALATED)
    assert [(t, p["account_id"], p["level"]) for _, t, p in calls if p["account_id"] == "P"][:2] == [
        (ev.MARGIN_CALL_ISSUED, "P", "warning"), (ev.MARGIN_CALL_ESCALATED, "P", "maintenance"),
    ]  # fmt: skip


def explained(engine: sa.Engine, decision_id: str) -> tuple[dict[str, Any], str]:
    result, words = explain_any(engine, decision_id)
    return result, words(result)


def grid_rows(text: str) -> list[list[str]]:
    """The rows of the first grid table of ``text`` (move and the three cells, split on spaces)."""
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split() == ["move", "up", "unchanged", "down"])
    return [line.split() for line in lines[header + 1 : header + 10]]


def test_explain_of_the_portfolio_call_prints_the_grid_it_was_decided_on(views_db: sa.Engine) -> None:
    """MC issued at the approval (multiplier 1): 10,000 x m per cell; then its escalation to a
    maintenance call at 13:10 (multiplier 1.25: moves of 0.05, worst -2,000, MM 1,600 = equity)."""
    (issued,) = [p for _, t, p in rows(views_db, ev.MARGIN_CALL_ISSUED) if p["account_id"] == "P"]
    result, text = explained(views_db, issued["margin_call_id"])
    assert result["matches_decision"] and result["worst_cells_recomputed"] == [
        {"underlying": "BTC", "move": "-0.16", "volatility": "up"}
    ]
    assert grid_rows(text)[0] == ["-0.16", "-1600", "*", "-1600", "-1600"]
    assert grid_rows(text)[8] == ["0.16", "1600", "1600", "1600"]
    for line in (
        "Margin model: portfolio; dynamic margin multiplier in force: BTC 1",
        "move -0.33: P&L -3300 x 0.35 = weighted -1155",
        "move 0.5: P&L 5000 x 0.35 = weighted 1750",
        "W = max(0, -(-1600)) = 1600",
        "S = short_option_minimum_rate x U x short option contracts = 0.01 x 100 x 0 = 0",
        "IM = max(W, S) = max(1600, 0) = 1600, rounded up = 1600",
        "MM = maintenance_factor x max(W, S) = 0.8 x 1600, rounded up = 1280",
        "Margin ratio = maintenance / equity = 1280 / 1600 rounded up = 0.8",
        "The recomputation matches the decision.",
    ):
        assert line in text, line
    escalated = next(
        position for position, _, p in rows(views_db, ev.MARGIN_CALL_ESCALATED)
        if p["account_id"] == "P" and p["level"] == "maintenance"
    )  # fmt: skip
    result, text = explained(views_db, str(escalated))
    assert result["decision"]["position"] == escalated and result["matches_decision"]
    assert grid_rows(text)[0] == ["-0.2", "-2000", "*", "-2000", "-2000"]
    for line in (
        "Grid of BTC: multiplier 1.25 in force, price range 0.16 x 1.25 = 0.2 in 4 steps each way; U = 100",
        "IM = max(W, S) = max(2000, 0) = 2000, rounded up = 2000",
        "MM = maintenance_factor x max(W, S) = 0.8 x 2000, rounded up = 1600",
    ):
        assert line in text, line


def test_explain_of_the_dynamic_margin_samples_by_their_log_positions(views_db: sa.Engine) -> None:
    (first, _, _), (second, _, _) = rows(views_db, ev.MARGIN_RATES_CHANGED)
    result, text = explained(views_db, str(first))
    assert result["kind"] == "rates" and result["matches_decision"]
    assert "First sample: no return; sigma_0 = initial_volatility = 0.02" in text
    assert "Sample S_0 = the last applied mark of BTC at or before the boundary = 100" in text
    result, text = explained(views_db, str(second))
    assert result["matches_decision"]
    for line in (
        "Cause: CollateralDeposited at position",
        f"Previous sample (position {first}, 2026-11-23T13:00:00.000000Z): S_0 = 100, sigma_0 = 0.02, "
        "multiplier_0 = 1.25",
        "r_1 = ln(S_1 / S_0) = ln(110 / 100) = 0.095310179804",
        "sigma_1 = sqrt(0.001268403037), half-even to 12 places = 0.035614646389",
        "= 1.78073231945: raw above the previous multiplier: the multiplier follows raw",
    ):
        assert line in text, line


def test_explain_of_margin_model_requests_by_their_request_ids(views_db: sa.Engine) -> None:
    result, text = explained(views_db, "S-1")
    assert result["kind"] == "model" and result["matches_decision"]
    assert "Under portfolio: equity 1600, initial margin 1600, maintenance margin 1280 USDT" in text
    assert "Equity 1600 >= initial margin 1600 under portfolio: meets it" in text
    assert grid_rows(text)[0] == ["-0.16", "-1600", "*", "-1600", "-1600"]
    result, text = explained(views_db, "S-2")
    assert result["matches_decision"] and result["decision"]["type"] == ev.MARGIN_MODEL_REJECTED
    assert "Equity 80 < initial margin 1600 under portfolio: does not meet it" in text


def test_the_cli_explains_by_request_id_and_says_what_it_cannot_find(
    views_db: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    from clearing.audit.explain import run_explain

    assert run_explain(views_db, "S-1", as_json=True) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["under_requested"]["portfolio"]["grids"][0]["worst_cell"] == {"move": "-0.16", "volatility": "up"}
    assert run_explain(views_db, "S-404", as_json=False) == 1
    assert "no margin call, liquidation order or margin-model request 'S-404'" in capsys.readouterr().err
    assert run_explain(views_db, "2", as_json=False) == 1  # parameters: not a decision explain knows
    assert "log position 2 holds a RiskParametersChanged: explain knows" in capsys.readouterr().err


# Under 14:00's multiplier: P's range 0.16 x 1.78073231945 = 0.284917171112; worst cell
# 10,000 x -0.284917171112 = -2,849.17171112; MM = 0.8 x that = 2,279.337368896, rounded up.
P_UNDERLYINGS = [{"underlying": "BTC", "multiplier": "1.78073231945", "initial_margin": "2849.17171112",
                  "maintenance_margin": "2279.3373689",
                  "worst_cell": {"move": "-0.284917171112", "volatility": "up"}}]  # fmt: skip


def test_account_show_json_names_the_model_the_worst_cell_and_the_multiplier(
    views_db: sa.Engine, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from clearing.cli import main
    from clearing.settings import get_settings

    monkeypatch.setenv("CLEARING_DATABASE_URL", views_db.url.render_as_string(hide_password=False))
    get_settings.cache_clear()
    try:
        assert main(["account", "show", "P", "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert main(["account", "show", "A", "--json"]) == 0
        standard = json.loads(capsys.readouterr().out)
    finally:
        get_settings.cache_clear()
    assert shown["margin_model"] == "portfolio" and shown["multipliers"] == {"BTC": "1.78073231945"}
    assert shown["worst_cells"] == [{"underlying": "BTC", "move": "-0.284917171112", "volatility": "up"}]
    assert shown["margin"]["cross"]["margin_model"] == "portfolio"
    assert shown["margin"]["cross"]["underlyings"] == P_UNDERLYINGS
    assert (shown["initial_margin"], shown["maintenance_margin"]) == ("2849.17171112", "2279.3373689")
    # A stays on the standard model: no grid, the multiplier in force on its BTCUSDT's underlying.
    assert (standard["margin_model"], standard["multipliers"], standard["worst_cells"]) == (
        "standard", {"BTC": "1.78073231945"}, [],
    )  # fmt: skip
    assert standard["margin"]["cross"]["underlyings"] == [{"underlying": "BTC", "multiplier": "1.78073231945"}]


def test_the_api_account_view_types_the_new_fields_and_as_of_the_head_equals_live(views_db: sa.Engine) -> None:
    from clearing.api.models import AccountView
    from clearing.audit.asof import account_as_of
    from clearing.store import queries

    with views_db.connect() as conn:
        live = queries.account_view(conn, "P")
        head = queries.log_head(conn)
        listed = {row["account_id"]: row["margin_model"] for row in queries.list_accounts(conn)}
    assert (listed["P"], listed["Q"], listed["A"], listed["B"]) == ("portfolio", "portfolio", "standard", "standard")
    assert live is not None
    typed = AccountView.model_validate(live).model_dump(mode="json")
    assert typed["worst_cells"] == [{"underlying": "BTC", "move": "-0.284917171112", "volatility": "up",
                                     "extreme": False}]  # fmt: skip
    assert typed["margin"]["cross"]["underlyings"][0]["worst_cell"]["move"] == "-0.284917171112"
    past = account_as_of(views_db, "P", str(head))
    assert past is not None
    for name in ("margin_model", "multipliers", "worst_cells", "margin"):
        assert past[name] == live[name], name
    # Before the approval the account was on the standard model, with no grid and multiplier 1.
    approved = rows(views_db, ev.MARGIN_MODEL_CHANGED)[0][0]
    before = account_as_of(views_db, "P", str(approved - 1))
    assert before is not None
    assert (before["margin_model"], before["multipliers"], before["worst_cells"]) == ("standard", {"BTC": "1"}, [])


def test_rebuilt_projections_equal_the_live_ones_with_the_new_columns(views_db: sa.Engine) -> None:
    from clearing.audit.rebuild import rebuild
    from clearing.audit.verify import verify

    report = verify(views_db)
    assert report.ok, [c.as_dict() for c in report.checks if not c.ok]
    checked = rebuild(views_db, swap=False)
    margin = next(t for t in checked.tables if t.table == "margin_state")
    assert margin.ok and not margin.unfilled_rows and margin.differing == 0, margin.as_dict()
    assert checked.consistent, [t.as_dict() for t in checked.tables]
    with views_db.connect() as conn:
        stored = conn.execute(
            sa.text("SELECT margin_model, underlyings FROM margin_state WHERE account_id = 'P' AND scope = 'cross'")
        ).one()
    assert (stored.margin_model, stored.underlyings) == ("portfolio", P_UNDERLYINGS)


def test_the_report_draws_the_grid_as_a_heatmap_and_the_multiplier_and_volatility(
    views_db: sa.Engine, tmp_path: Any
) -> None:
    from clearing.audit.report import heat_colour, parse_time, write_report

    output = tmp_path / "P.html"
    # The whole market (P's own events end at 13:10; the 14:00 sample comes later).
    timeline = write_report(views_db, "P", output, start=parse_time(at(0)), end=parse_time(at(7600)))
    page = output.read_text("utf-8")
    # Heatmaps at P's call decisions: issued (multiplier 1), escalated twice (1.25).
    assert [m.reason for m in timeline.grid_moments] == [
        "MarginCallIssued (warning)", "MarginCallEscalated (maintenance)", "MarginCallEscalated (liquidation)",
    ]  # fmt: skip
    assert page.count('class="chart heatmap"') == 3
    first = page[page.index('class="chart heatmap"') :]
    first = first[: first.index("</svg>")]
    assert first.count('<g class="cell') == 27 + 2  # 9 moves x 3 volatility cells, 2 extreme cells
    assert '<g class="cell worst" data-move="-0.16" data-volatility="up" data-pnl="-1600">' in first
    assert first.count("cell worst") == 1 and "✕" in first
    assert 'data-move="0.5" data-volatility="unchanged" data-pnl="5000" data-weighted-pnl="1750"' in first
    assert "P&amp;L -1600 (the worst cell)" in first  # the exact figure in the cell's title
    # Coloured on the grid's largest |P&L| (the extreme 0.5's weighted 1,750): that cell full blue,
    # the worst loss red by 1,600 / 1,750, no P&L white.
    assert 'fill="#4575b4"' in first and f'fill="{heat_colour(-1600.0, 1750.0)}"' in first
    # 255 - (255 - 215, 255 - 48, 255 - 39) x 1600 / 1750 = (218.4, 65.7, 57.5): #da423a.
    assert heat_colour(-1600.0, 1750.0) == "#da423a" and 'fill="#ffffff"' in first
    assert "IM 1600, MM 1280, worst cell move -0.16 up" in first
    assert '<g class="cell worst" data-move="-0.2" data-volatility="up" data-pnl="-2000">' in page
    # Dynamic margin of BTC: the two samples, drawn as steps.
    assert [(p.multiplier, p.volatility) for p in timeline.rates["BTC"]] == [
        (D("1.25"), D("0.02")), (D("1.78073231945"), D("0.035614646389")),
    ]  # fmt: skip
    assert "BTC: dynamic margin multiplier in force (raw multiplier dashed)" in page
    assert "BTC: EWMA volatility of its marks (per sample period)" in page
    assert "<th>margin model at the end</th><td>portfolio</td>" in page


def test_without_a_call_the_report_draws_the_grid_at_the_largest_requirements(views_db: sa.Engine) -> None:
    """Q (10,000 USDT, the same long) is never called: its grids are drawn at its three largest
    initial margins, in log order: 1,600 (approved, multiplier 1), 2,000 (1.25), 2,849.17171112
    (1.78073231945)."""
    from clearing.audit.report import GRID_LARGEST_MAX, build_timeline, parse_time, render_html

    assert not [p for _, _, p in rows(views_db, ev.MARGIN_CALL_ISSUED) if p["account_id"] == "Q"]
    timeline = build_timeline(views_db, "Q", start=parse_time(at(0)), end=parse_time(at(7600)))
    assert GRID_LARGEST_MAX == 3
    assert [(m.reason, m.initial_margin) for m in timeline.grid_moments] == [
        ("a largest initial margin", D(1600)), ("a largest initial margin", D(2000)),
        ("a largest initial margin", D("2849.17171112")),
    ]  # fmt: skip
    page = render_html(timeline)
    assert "its largest requirements" in page and page.count('class="chart heatmap"') == 3
    assert '<g class="cell worst" data-move="-0.284917171112" data-volatility="up" data-pnl="-2849.17171112">' in page
