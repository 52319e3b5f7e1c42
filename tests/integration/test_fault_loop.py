"""The fault loop (bench/faultloop.py) in small: a simulated market of a few thousand inputs under
``clearing run`` with a SIGKILL, a broker restart and a PostgreSQL restart; every input in the
log exactly once and ``audit verify`` ok. (The full run, 100,000+ inputs: see the README.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LOOP = Path(__file__).resolve().parents[2] / "bench" / "faultloop.py"


def test_a_small_fault_loop_loses_and_duplicates_no_input() -> None:
    done = subprocess.run(
        [sys.executable, str(LOOP), "--events", "2000", "--faults", "3", "--json", "--drain-wait-s", "10",
         "--stop-wait-s", "15"],
        capture_output=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-4000:]
    figures = json.loads(done.stdout.decode().splitlines()[-1])
    assert figures["faults"] == {"sigkill": 1, "broker": 1, "postgres": 1}
    assert figures["events"] >= 2000
    assert figures["inputs_logged"] == figures["events"]
    assert figures["lost"] == 0 and figures["duplicated"] == 0
    assert figures["unexpected_ledger_exits"] == 0
    assert figures["audit_verify_ok"]
