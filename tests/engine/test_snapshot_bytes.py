"""``state_bytes`` takes orjson's spelling where it equals the one every stored snapshot has
(``json.dumps`` with sorted keys, compact, non-ASCII escaped): a snapshot written or compared by
this version must be byte for byte what an earlier one wrote for the same state."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from clearing.domain.dynamicmargin import VolatilityState
from clearing.domain.state import LedgerState, OpenFill
from clearing.engine.snapshots import snapshot_matches, state_bytes
from clearing.engine.statecodec import PAIRING_KEYS, carries_pairing, decode_state, encode_state

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


# ------------------------------------------------------------------------------------------------
# snapshots written before the pairing record existed


def _with_open_fill() -> LedgerState:
    state = LedgerState()
    state.account("ACC-1").credit("USDT", Decimal("100"))
    state.open_fills["T-1"] = OpenFill("F-1", "ACC-1", "BTCUSDT", "buy", Decimal("0.5"), Decimal("40000"))
    return state


def _written_before_pairing(state: LedgerState) -> bytes:
    """What a ledger before the pairing record wrote for ``state``: its books, no pairing keys."""
    document = encode_state(state)
    for key in PAIRING_KEYS:
        del document[key]
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8")


def test_every_snapshot_says_it_carries_the_pairing_record_even_empty() -> None:
    document = json.loads(state_bytes(LedgerState()))
    assert carries_pairing(document)
    assert (document["open_fills"], document["busted_fills"]) == ([], {})
    assert not carries_pairing(json.loads(_written_before_pairing(LedgerState())))


def test_a_snapshot_from_before_the_pairing_record_is_compared_without_it() -> None:
    state = _with_open_fill()
    old = _written_before_pairing(state)
    assert state_bytes(state) != old
    assert snapshot_matches(state, old)
    # Its books are still compared: a balance that differs is a snapshot that differs.
    other = _with_open_fill()
    other.account("ACC-1").credit("USDT", Decimal("1"))
    assert not snapshot_matches(other, old)


def test_a_snapshot_that_carries_the_pairing_record_is_compared_in_full() -> None:
    state = _with_open_fill()
    stored = state_bytes(state)
    assert snapshot_matches(state, stored)
    without = _with_open_fill()
    without.open_fills.clear()
    # The same books, an open fill short: the snapshot holds the record, so it differs.
    assert not snapshot_matches(without, stored)
    assert not snapshot_matches(state, state_bytes(without))


def test_margin_models_and_dynamic_margin_round_trip_and_are_absent_when_unused() -> None:
    """A state without a portfolio account or a dynamic-margin sample spells no key for them (the
    bytes of every snapshot written before they existed); one with them reads back equal."""
    state = LedgerState()
    state.account("A").credit("USDT", Decimal(1))
    assert {"margin_models", "volatility"}.isdisjoint(encode_state(state))
    state.account("A").margin_model = "portfolio"
    state.volatility["BTC"] = VolatilityState(
        "BTC", True, datetime(2027, 1, 1, tzinfo=UTC), Decimal("60000"), Decimal("0.03"), Decimal("1"),
        Decimal("1.25"), 1,
    )  # fmt: skip
    decoded = decode_state(json.loads(state_bytes(state)))
    assert decoded.accounts["A"].margin_model == "portfolio" and decoded.volatility == state.volatility
    assert state_bytes(decoded) == state_bytes(state)
