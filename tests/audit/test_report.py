"""The HTML account report: built by replaying a simulated crash, opened in headless Chromium,
and the screenshot checked for content."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from clearing.audit.report import (
    POINTS_MAX,
    ReportError,
    build_timeline,
    downsample_indices,
    parse_time,
    render_html,
    write_report,
)
from tests.api.ledger_data import feed, records_of

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_TIMEOUT_S = 120
WINDOW = (1200, 900)


@pytest.fixture(scope="module")
def crash_url(pg_server) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A database holding a simulated market with a crash, fed through the ledger."""
    import uuid

    from clearing.simulate import Scenario, generate
    from clearing.store.db import make_engine, upgrade

    name = f"clearing_test_report_{uuid.uuid4().hex[:12]}"
    pg_server.create_database(name)
    url = pg_server.url(name)
    try:
        upgrade(url)
        writer = make_engine(url, role="clearing_app")
        try:
            feed(
                writer,
                records_of(
                    generate(Scenario(accounts=20, trades=600, steps=60, crash_at=0.6, crash_depth=Decimal("0.45")))
                ),
            )
        finally:
            writer.dispose()
        yield url
    finally:
        pg_server.drop_database(name)


@pytest.fixture(scope="module")
def crash_engine(crash_url: str) -> Iterator[sa.Engine]:
    from clearing.store.db import make_engine

    reader = make_engine(crash_url, role="clearing_reader")
    yield reader
    reader.dispose()


def _most_exposed_account(engine: sa.Engine) -> str:
    """The account with the most margin-call / liquidation events, else the most events."""
    with engine.connect() as conn:
        return str(
            conn.execute(
                sa.text(
                    "SELECT substr(stream, 9) FROM events WHERE stream LIKE 'account:ACC-%' GROUP BY stream "
                    "ORDER BY count(*) FILTER (WHERE type LIKE 'MarginCall%' OR type LIKE 'Liquidation%') DESC, "
                    "count(*) DESC, stream LIMIT 1"
                )
            ).scalar_one()
        )


# ------------------------------------------------------------------------------------------------
# a PNG decoder just big enough for Chromium's screenshots (8-bit RGB/RGBA, not interlaced)


def decode_png(data: bytes) -> tuple[int, int, int, bytes]:
    """(width, height, bytes per pixel, unfiltered pixel bytes)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    offset, idat, header = 8, b"", b""
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        offset += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    if depth != 8 or colour not in (2, 6) or interlace:
        raise ValueError(f"unsupported PNG (depth {depth}, colour type {colour}, interlace {interlace})")
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    out = bytearray()
    previous = bytearray(stride)
    for row in range(height):
        start = row * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = previous[i]
            c = previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        out += line
        previous = line
    return width, height, bpp, bytes(out)


# ------------------------------------------------------------------------------------------------


def test_report_of_a_crash_has_charts_with_many_points(crash_engine: sa.Engine, tmp_path: Path) -> None:
    account = _most_exposed_account(crash_engine)
    output = tmp_path / "report.html"
    timeline = write_report(crash_engine, account, output)
    document = output.read_text(encoding="utf-8")

    assert len(timeline.risk) > 50 and timeline.marks, "the replay should give a series per mark"
    polylines = re.findall(r'<polyline[^>]*points="([^"]+)"', document)
    assert len(polylines) >= 3 + len(timeline.marks)
    assert max(len(points.split()) for points in polylines) > 50
    assert all(len(points.split()) <= POINTS_MAX + 50 for points in polylines)
    # Self-contained: nothing is fetched from anywhere.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", document)
    assert "<script" not in document
    # Exact strings in the tables, as the projection holds them.
    assert f"Account {account}" in document
    assert timeline.risk[-1].status in document


def test_report_screenshot_in_headless_chromium_is_not_blank(crash_engine: sa.Engine, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium; scripts/test tries as root)")
    account = _most_exposed_account(crash_engine)
    output = tmp_path / "report.html"
    write_report(crash_engine, account, output)
    screenshot = tmp_path / "report.png"
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            f"--screenshot={screenshot}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            output.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=CHROMIUM_TIMEOUT_S,
    )
    width, height, bpp, pixels = decode_png(screenshot.read_bytes())
    assert (width, height) == WINDOW
    colours = set()
    non_white = 0
    for index in range(0, len(pixels), bpp * 7):  # every 7th pixel is plenty
        rgb = pixels[index : index + 3]
        colours.add(rgb)
        non_white += rgb != b"\xff\xff\xff"
    sampled = len(pixels) // (bpp * 7)
    assert len(colours) > 40, f"only {len(colours)} distinct colours: the page looks blank"
    assert non_white > sampled * 0.03, f"only {non_white} of {sampled} sampled pixels are not white"
    # Blue equity line and red maintenance line are both drawn (anti-aliased: allow some slack).
    assert any(r < 60 and 90 < g < 140 and b > 150 for r, g, b in colours)
    assert any(r > 180 and g < 60 and b < 60 for r, g, b in colours)


def test_report_period_and_unknown_account(crash_engine: sa.Engine) -> None:
    account = _most_exposed_account(crash_engine)
    whole = build_timeline(crash_engine, account)
    middle = whole.risk[len(whole.risk) // 2].occurred_at
    later = build_timeline(crash_engine, account, start=middle)
    assert later.risk and all(point.occurred_at >= middle for point in later.risk)
    assert len(later.risk) < len(whole.risk)
    assert later.risk[-1] == whole.risk[-1], "folding before the period must give the same end state"
    with pytest.raises(ReportError, match="no account"):
        build_timeline(crash_engine, "NOBODY")
    with pytest.raises(ReportError, match="after its start"):
        build_timeline(crash_engine, account, start=middle, end=middle)
    assert "<svg" in render_html(later)


def test_parse_time_needs_a_zone() -> None:
    assert parse_time("2026-11-23T12:00:00Z").utcoffset() is not None
    for bad in ("2026-11-23T12:00:00", "noon"):
        with pytest.raises(ReportError):
            parse_time(bad)


def test_downsampling_keeps_extremes_and_kept_points() -> None:
    values = [float(i % 100) for i in range(50_000)]
    values[31_337] = 1e9
    indices = downsample_indices(values, 2_000, keep=[12_345])
    assert len(indices) <= 2_000
    assert {0, 49_999, 31_337, 12_345} <= set(indices)
    assert downsample_indices([1.0, 2.0], 2_000) == [0, 1]


def test_cli_writes_the_report(
    crash_url: str,
    crash_engine: sa.Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from clearing.cli import main
    from clearing.settings import get_settings

    account = _most_exposed_account(crash_engine)
    monkeypatch.setenv("CLEARING_DATABASE_URL", crash_url)
    monkeypatch.setenv("CLEARING_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    try:
        assert main(["audit", "report", account, "--from", "2026-11-23T00:00:00Z"]) == 0
        assert f"wrote {tmp_path / 'home' / 'reports' / (account + '.html')}" in capsys.readouterr().out
        assert main(["audit", "report", "NOBODY", "--output", str(tmp_path / "x.html")]) == 1
        assert "no account 'NOBODY'" in capsys.readouterr().err
    finally:
        get_settings.cache_clear()
