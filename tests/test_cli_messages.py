"""What the ``clearing`` command says when it cannot do what was asked: one sentence a person can
act on, no traceback, and nothing started or created behind their back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clearing.embedded import resolve_home
from clearing.settings import Settings

# Without the warning a source edited since the compiled build gives (it is not what is tested here).
CLEARING = [sys.executable, "-W", "ignore::RuntimeWarning", "-m", "clearing.cli"]
COMMAND_TIMEOUT_S = 120


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEARING_")}
    return {**env, **extra}


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        CLEARING + args, cwd=cwd, env=clean_env(**env), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S
    )


@pytest.mark.parametrize(
    "args",
    [["account", "show", "ACC-00001"], ["audit", "explain", "MC-1"], ["audit", "report", "ACC-00001"],
     ["account", "show", "ACC-00001", "--as-of-event-time", "2026-11-23T00:16:50Z"]],
)
def test_a_command_that_reads_the_ledger_says_there_is_none_and_starts_nothing(tmp_path: Path, args: list[str]) -> None:
    done = run(args, tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "no ledger here" in lines[0] and str(tmp_path / ".clearing") in lines[0]
    assert "CLEARING_HOME" in lines[0]
    assert not (tmp_path / ".clearing" / "postgres").exists()  # no empty database was started


def test_a_named_home_without_a_ledger_is_named(tmp_path: Path) -> None:
    done = run(["account", "show", "ACC-00001"], tmp_path, CLEARING_HOME=str(tmp_path / "elsewhere"))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"CLEARING_HOME={tmp_path / 'elsewhere'}" in done.stderr


def test_the_home_is_found_from_a_subfolder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".clearing" / "postgres").mkdir(parents=True)
    (tmp_path / ".clearing" / "postgres" / "PG_VERSION").write_text("18\n")
    inner = tmp_path / "reports" / "q4"
    inner.mkdir(parents=True)
    monkeypatch.delenv("CLEARING_HOME", raising=False)
    monkeypatch.chdir(inner)
    assert resolve_home(Settings()) == tmp_path / ".clearing"
    monkeypatch.setenv("CLEARING_HOME", str(tmp_path / "named"))
    assert resolve_home(Settings()) == tmp_path / "named"  # a named home is used as named


def test_params_errors_are_sentences_without_pydantic_boilerplate(tmp_path: Path) -> None:
    document = {"version": "x", "valuation_asset": "USDT",
                "instruments": [{"symbol": "BTCUSDT", "kind": "perpetual", "settlement_asset": "USDT",
                                 "contract_size": 1.5, "tiers": []}], "assets": []}
    path = tmp_path / "params.json"
    path.write_text(json.dumps(document))
    done = run(["params", "apply", str(path), "--check"], tmp_path)
    assert done.returncode == 2
    message = done.stderr.strip()
    assert len(message.splitlines()) == 1
    for noise in ("http", "pydantic", "type=", "input_value", "Value error,"):
        assert noise not in message, noise
    assert "instruments.0.contract_size must be a decimal string" in message
    assert "margin_call is required" in message and "assets must not be empty" in message
