"""Settings of the process that runs clearing's long jobs: the ledger (``clearing run``), the audit
replays and their worker processes.

Only the garbage collector so far. The ledger's state is a large set of long-lived containers
(accounts, positions, trigger entries), and folding an event allocates and frees some dozens more,
almost none of them in reference cycles. With CPython's default thresholds (700, 10, 10) the
collector ran a young collection every 700 net allocations and, while the state grew, full
collections of the whole state over and over: 13% of the ledger thread's samples in
``bench/ingest.py``. Raising the first threshold makes young collections rarer and full ones
follow; cycles are still collected, later. Measured on 200,000 events (``bench/ingest.py``, same
hour): 15,873 and 17,695 events/s with the defaults, 21,256 with these thresholds and 21,179 with
the collector off. Reference counting frees everything else as before.
"""

from __future__ import annotations

import gc

GC_THRESHOLDS = (50_000, 20, 20)


def tune_gc() -> None:
    """Set the collector's thresholds for a long job (see the module docstring). Idempotent."""
    gc.set_threshold(*GC_THRESHOLDS)
