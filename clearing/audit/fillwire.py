"""A logged fill's payload read straight into its values, for the replays (``LogReplay.feed``).

Fills are nearly all of a log's events. Read as a dict, a fill's payload cost a replay about a
fifth of its work: orjson's parse into a dict, the look-up of every field (orjson presizes its
dicts, and a presized dict is not a string-keyed one, so each look-up compares keys the slow
way), and the walk for floats that keeps integers exact (``jsontext.load_json``). msgspec
decodes the text into a struct of the fill's fields (``FillFields``), without a dict.

``FillFields`` is made from the fill's description (``inputs.FILL``), its fields in the order its
reader takes them (``FILL_READER.names``): the replay's reader needs no list of its own. The
values are exactly what ``load_json`` gives for the same text. Every field is ``Any``, so
msgspec converts nothing and checks no type: a JSON string is a ``str``, an integer an ``int`` of
any size, a float is made by ``float`` from its text (``float_hook``, as the standard library's
parser does), null is ``None``. A field left out is None (``Reader.from_list`` reads it as its
default), or its default when that is a text, and unknown fields are skipped, as the reader of the
payload as a dict skips them. A text that is not an object with every required field gives
None: the caller then reads it the general way (``load_json`` and ``events.trusted_message``),
which fails or succeeds as it always did. A property test checks that both ways give the same
message.

Not compiled: ``logreplay.decode_fill`` (compiled, so that a fill's read is no Python call) reads
a text into this struct's values.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from clearing.domain.inputs import FROM_WIRE, Fill, Reader

FILL_READER: Final[Reader] = FROM_WIRE[Fill]


def _struct_field(name: str, required: bool, default: Any) -> tuple[str, Any] | tuple[str, Any, Any]:
    if required:
        return (name, Any)
    return (name, Any, default if isinstance(default, str) else None)


# ``kw_only``: optional fields among required ones. Not tracked by the garbage collector
# (``gc=False``): it holds strings, numbers and None only, so it can be in no reference cycle, and
# one fill read is then one container fewer to count towards the collector's next young collection.
FillFields: Final[type[msgspec.Struct]] = msgspec.defstruct(
    "FillFields",
    [
        _struct_field(name, required, default)
        for name, required, default in zip(FILL_READER.names, FILL_READER.required, FILL_READER.defaults, strict=True)
    ],
    kw_only=True,
    gc=False,
)

# Where the replay finds these among the values.
ACCOUNT_ID: Final = FILL_READER.names.index("account_id")
QUANTITY: Final = FILL_READER.names.index("quantity")
PRICE: Final = FILL_READER.names.index("price")
