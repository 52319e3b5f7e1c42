"""``state_bytes`` takes orjson's spelling where it equals the one every stored snapshot has
(``json.dumps`` with sorted keys, compact, non-ASCII escaped): a snapshot written or compared by
this version must be byte for byte what an earlier one wrote for the same state."""

from __future__ import annotations

import json
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from clearing.domain.state import LedgerState
from clearing.engine.snapshots import state_bytes
from clearing.engine.statecodec import encode_state

# Identifiers as a message may carry them: any text, with what either encoder escapes often.
identifiers = st.one_of(
    st.text(alphabet='A-0_"\\\x7f\x00\n\t\u00e9\u20ac\U0001f600', min_size=1, max_size=8),
    st.text(min_size=1, max_size=8),
)


def reference(state: LedgerState) -> bytes:
    return json.dumps(encode_state(state), sort_keys=True, separators=(",", ":")).encode("utf-8")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(identifiers, st.decimals(allow_nan=False, allow_infinity=False, places=6)), max_size=6))
def test_state_bytes_are_the_reference_spelling(credits: list[tuple[str, Decimal]]) -> None:
    state = LedgerState()
    for account_id, amount in credits:
        state.account(account_id).credit("USDT", amount)
    assert state_bytes(state) == reference(state)


def test_both_spellings_are_taken() -> None:
    plain, accented = LedgerState(), LedgerState()
    plain.account("ACC-1").credit("USDT", Decimal("1.5"))
    accented.account("ACC-\u00e9").credit("USDT", Decimal("1.5"))
    assert state_bytes(plain) == reference(plain) and state_bytes(plain).isascii()
    assert state_bytes(accented) == reference(accented) and b"\\u00e9" in state_bytes(accented)
