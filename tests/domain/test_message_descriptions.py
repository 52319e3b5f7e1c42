"""One description per input message (``inputs.FILL``...), and what is made from it agrees with it:
the compiled class takes exactly the described fields, the validator (``messages.SCHEMAS``) accepts
each of them and refuses a wrong value of each, the decoder's fast path builds the message the
checked path builds, and the replay's readers (``inputs.FROM_WIRE``, and a fill's text read by
``clearing.audit.fillwire``) read back what was written."""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from clearing.domain import inputs
from clearing.domain.inputs import FROM_WIRE, MODELS, FieldSpec, Fill, Message
from clearing.domain.messages import _FAST_MODELS, SCHEMAS, TOPIC_TYPES, _decode_fast, decode_checked
from clearing.domain.params import bundled_document
from clearing.domain.state import LedgerState

TOPIC_OF = {model: topic for topic, kinds in TOPIC_TYPES.items() for model in kinds.values()}


def sample(spec: FieldSpec) -> Any:
    """A valid wire value of the field, other than its default."""
    match spec.shape:
        case inputs.ID:
            return f"{spec.name}-7"
        case inputs.LITERAL:
            return next(value for value in reversed(spec.literals) if value != spec.default)
        case inputs.DECIMAL:
            return "-12.5"
        case inputs.POSITIVE:
            return "2.25"
        case inputs.NOT_NEGATIVE:
            return "0.61"
        case inputs.NON_ZERO:
            return "-3"
        case inputs.TIME:
            return "2026-11-23T12:00:00.123456Z"
        case inputs.DOCUMENT:
            document = copy.deepcopy(bundled_document())
            document["version"] = "described-1"
            return document
    raise AssertionError(spec.shape)


def wrong(spec: FieldSpec) -> Any:
    """A value the field's shape refuses."""
    return {
        inputs.ID: "",
        inputs.LITERAL: "neither",
        inputs.DECIMAL: "1e5",
        inputs.POSITIVE: "0",
        inputs.NOT_NEGATIVE: "-1",
        inputs.NON_ZERO: "0",
        inputs.TIME: "2026-11-23 12:00",
        inputs.DOCUMENT: "a document",
    }[spec.shape]


def payload(model: type[Message], *, leave_out: frozenset[str] = frozenset()) -> dict[str, Any]:
    description = model.DESCRIPTION
    return {
        "type": description.type,
        **{spec.name: sample(spec) for spec in description.fields if spec.name not in leave_out},
    }


def optional(model: type[Message]) -> frozenset[str]:
    return frozenset(spec.name for spec in model.DESCRIPTION.fields if not spec.required)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_the_class_takes_exactly_the_described_fields(model: type[Message]) -> None:
    description = model.DESCRIPTION
    assert description.names == model.FIELDS
    message = decode_checked(TOPIC_OF[model], json.dumps(payload(model)).encode())
    values = {name: getattr(message, name) for name in description.names[1:]}
    # By keyword and by position in the constructor's order: the same message.
    assert model(**values) == message
    assert model(*(values[spec.name] for spec in description.constructor_order)) == message
    # A field left out takes its described default; a required one cannot be left out.
    for spec in description.fields:
        rest = {name: value for name, value in values.items() if name != spec.name}
        if spec.required:
            with pytest.raises(TypeError):
                model(**rest)
        else:
            assert getattr(model(**rest), spec.name) == spec.default
    with pytest.raises(TypeError):
        model(**values, undescribed="x")


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_the_validator_checks_every_described_field(model: type[Message]) -> None:
    schema = SCHEMAS[model]
    description = model.DESCRIPTION
    assert tuple(schema.model_fields) == description.names
    assert {name for name, info in schema.model_fields.items() if info.is_required()} == {
        "type", *(spec.name for spec in description.fields if spec.required)
    }  # fmt: skip
    valid = payload(model)
    schema.model_validate(valid)
    for spec in description.fields:
        with pytest.raises(ValidationError) as refused:
            schema.model_validate({**valid, spec.name: wrong(spec)})
        assert [error["loc"][0] for error in refused.value.errors()] == [spec.name]
        if spec.nullable:
            assert getattr(schema.model_validate({**valid, spec.name: None}), spec.name) is None
        elif not spec.required:
            with pytest.raises(ValidationError):
                schema.model_validate({**valid, spec.name: None})
    with pytest.raises(ValidationError):
        schema.model_validate({**valid, "undescribed": "x"})


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_the_fast_path_and_the_replay_read_what_the_validator_reads(model: type[Message]) -> None:
    topic = TOPIC_OF[model]
    for left_out in (frozenset(), optional(model)):
        raw = json.dumps(payload(model, leave_out=left_out)).encode()
        checked = decode_checked(topic, raw)
        fast = _decode_fast(topic, raw)
        if model in _FAST_MODELS:
            assert fast is not None
            assert fast[0] == checked and fast[1] == checked.wire()
        else:
            assert fast is None  # a message holding a document is always validated
        assert FROM_WIRE[model](checked.wire()) == checked
        for spec in model.DESCRIPTION.fields:
            value = getattr(checked, spec.name)
            assert spec.name in left_out or value != spec.default, spec.name  # read, not defaulted
            if spec.shape in inputs.DECIMAL_SHAPES and value is not None:
                assert isinstance(value, Decimal)


def test_a_fill_read_from_its_text_is_the_fill_validated() -> None:
    from clearing.audit.fillwire import FILL_READER, FillFields
    from clearing.audit.logreplay import _fill_message, decode_fill

    assert set(FillFields.__struct_fields__) == set(Fill.DESCRIPTION.names[1:])
    assert FILL_READER.names == tuple(spec.name for spec in Fill.DESCRIPTION.constructor_order)
    for left_out in (frozenset(), optional(Fill)):
        checked = decode_checked("fills", json.dumps(payload(Fill, leave_out=left_out)).encode())
        values = decode_fill(json.dumps(checked.wire()))
        assert values is not None
        assert _fill_message(values, LedgerState()) == checked
