"""A logged fill's payload read straight into its fields, for the replays (``LogReplay.feed``).

Fills are nearly all of a log's events. Read as a dict, a fill's payload cost a replay about a
fifth of its work: orjson's parse into a dict, the look-up of every field (orjson presizes its
dicts, and a presized dict is not a string-keyed one, so each look-up compares keys the slow
way), and the walk for floats that keeps integers exact (``jsontext.load_json``). msgspec
decodes the text into a struct of the fields ``inputs.fill_from_wire`` reads, without a dict.

The values are exactly what ``load_json`` gives for the same text. Every field is ``Any``, so
msgspec converts nothing and checks no type: a JSON string is a ``str``, an integer an ``int`` of
any size, a float is made by ``float`` from its text (``float_hook``, as the standard library's
parser does), null is ``None``. The optional fields default to what ``fill_from_wire`` takes when
they are absent, and unknown fields are skipped, as ``fill_from_wire`` skips them. A text that is
not an object with every required field gives None: the caller then reads it the general way
(``load_json`` and ``events.trusted_message``), which fails or succeeds as it always did. A
property test checks that both ways give the same message.

Not compiled (mypyc cannot compile a ``msgspec.Struct``): ``logreplay.decode_fill`` reads a text
into this struct's values.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec


class FillFields(msgspec.Struct, kw_only=True, gc=False):
    """In the order of ``inputs.fill_from_fields``' parameters (``kw_only``: optional fields
    among required ones). Not tracked by the garbage collector (``gc=False``): it holds strings,
    numbers and None only, so it can be in no reference cycle, and one fill read is then one
    container fewer to count towards the collector's next young collection."""

    fill_id: Any
    trade_id: Any
    account_id: Any
    instrument: Any
    side: Any
    quantity: Any
    price: Any
    fee: Any = None
    fee_asset: Any = None
    liquidity: Any = None
    margin_mode: Any = "cross"
    occurred_at: Any


# Where ``logreplay.decode_fill`` (compiled, so that a fill's read is no Python call) finds the
# quantity and the price among the values.
QUANTITY: Final = 5
PRICE: Final = 6
