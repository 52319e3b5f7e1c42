"""The ledger's rotating margin refresh: which holders' ``margin_state`` rows a batch with marks
writes although no event of theirs changed them.

Marks move every holder's equity, and writing every holder's row after every batch with marks
would cost more than the ingest. So a batch with marks writes a rotating window of at most
``MARGIN_REFRESH_ACCOUNTS_MAX`` holders, in sorted order from a cursor the ledger carries from
batch to batch; a status change is always written at once (it is a decision, and decisions touch
their account). This bounds how stale a row can get.

The policy is the ledger's (``Ledger._refresh_rotation``); the audit's replay re-enacts it to
know which rows the projections should hold (``clearing.audit.logreplay``), so both read it
from here.
"""

from __future__ import annotations

from clearing.domain.state import LedgerState

# Holders whose margin row a batch with marks refreshes (rotating). Read as an attribute of this
# module (``refresh.MARGIN_REFRESH_ACCOUNTS_MAX``), so that tests that lower it lower it for the
# ledger and the replay alike.
MARGIN_REFRESH_ACCOUNTS_MAX = 2_000


class SortedHolders:
    """A state's holders (``LedgerState.holders_all``) in sorted order, as the rotating margin
    refresh walks them (``refresh_window``), sorted again only when the set has changed since the
    last call: holders change far less often than marks come, and comparing the sets costs a
    tenth of the sort. The list returned is shared: do not change it."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.order: list[str] = []

    def of(self, state: LedgerState) -> list[str]:
        now = state.holders_all()
        if now != self.seen:
            self.seen = now
            self.order = sorted(now)
        return self.order


def refreshes_every_holder(holders: list[str]) -> bool:
    """Whether a window is every holder, wherever the cursor stands (it then does not move)."""
    return len(holders) <= MARGIN_REFRESH_ACCOUNTS_MAX


def refresh_window(holders: list[str], cursor: int) -> tuple[list[str], int]:
    """The next window of at most ``MARGIN_REFRESH_ACCOUNTS_MAX`` sorted holders from ``cursor``
    (wrapping around), and the cursor after it; every holder when there are no more than that."""
    if refreshes_every_holder(holders):
        return holders, cursor
    start = cursor % len(holders)
    window = holders[start : start + MARGIN_REFRESH_ACCOUNTS_MAX]
    if len(window) < MARGIN_REFRESH_ACCOUNTS_MAX:
        window += holders[: MARGIN_REFRESH_ACCOUNTS_MAX - len(window)]
    return window, start + MARGIN_REFRESH_ACCOUNTS_MAX
