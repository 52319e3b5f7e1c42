"""The process settings of clearing's long jobs (clearing/runtime.py) are in force where they run:
every ``clearing`` command and the parallel replay's worker processes (which run no command)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from clearing.runtime import GC_THRESHOLDS

PROBE = """
import gc, json, sys
from clearing import cli
from clearing.audit import parallel
before = gc.get_threshold()
try:
    cli.main(["risk", "evaluate", sys.argv[1]])  # a command that needs no services
except SystemExit:
    pass
after_command = gc.get_threshold()
gc.set_threshold(*before)
parallel._init_worker(None, None)
print(json.dumps([before, after_command, gc.get_threshold()]))
"""


def test_commands_and_replay_workers_run_with_the_tuned_collector(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-input.json"
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(missing)], capture_output=True, text=True, timeout=120, check=True
    )
    before, after_command, in_worker = json.loads(done.stdout.strip().splitlines()[-1])
    assert tuple(before) != GC_THRESHOLDS  # CPython's defaults: the probe starts untuned
    assert tuple(after_command) == GC_THRESHOLDS
    assert tuple(in_worker) == GC_THRESHOLDS
