"""What the back-office API answers, as pydantic models: ``/openapi.json`` names every field the
back office reads, and FastAPI checks each response against its model before it leaves.

On the wire as in CONTRACT.md: every number that is money, a price, a quantity or a rate is a
JSON string holding an exact decimal (``Decimal``, spelled ``to_wire``: no exponent, no trailing
fractional zero); counts and log positions are integers; times are RFC 3339 strings.

Errors have two shapes, both documented on the routes where they happen: ``Problem``
(``{"detail": "a sentence"}``) for 401, 404 and 503, and ``ValidationProblem`` (``{"detail":
[{"loc": [...], "msg": "...", "type": "..."}]}``) for every 422, whether the parameter failed its
declared type or a rule checked in the handler.
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

# ``to_wire``'s spelling: a minus or not, digits without leading zeros, a fraction without
# trailing zeros, no exponent.
DECIMAL_PATTERN = r"^-?(0|[1-9][0-9]*)(\.[0-9]*[1-9])?$"

DecimalString = Annotated[
    str,
    Field(pattern=DECIMAL_PATTERN, description="an exact decimal as a string", examples=["65000.5"]),
]
Time = Annotated[str, Field(description="RFC 3339 with a zone", examples=["2026-11-23T12:00:00.123000+00:00"])]
Position = Annotated[int, Field(ge=0, description="a position in the log")]

Item = TypeVar("Item")


class Page(BaseModel, Generic[Item]):
    """One page of a list. Pass ``next_after`` as ``after`` to get the next page."""

    items: list[Item]
    next_after: str | None = Field(description="the cursor of the next page; null on the last page")


class Problem(BaseModel):
    """The body of 401, 404 and 503 answers."""

    detail: str = Field(description="what is wrong, in a sentence")


class ValidationIssue(BaseModel):
    loc: list[str | int] = Field(description="where: ['query', 'time'], ['path', 'account_id']")
    msg: str = Field(description="what is wrong with it")
    type: str = Field(description="a machine-readable kind, e.g. 'value_error', 'string_too_long'")


class ValidationProblem(BaseModel):
    """The body of every 422 answer: one issue per parameter that was refused."""

    detail: list[ValidationIssue]


# ------------------------------------------------------------------------------------------------
# accounts


class AccountSummary(BaseModel):
    """An account with its cross margin state (null figures: the account has no cross scope yet)."""

    account_id: str
    equity: DecimalString | None
    initial_margin: DecimalString | None
    maintenance_margin: DecimalString | None
    margin_ratio: DecimalString | None = Field(description="maintenance / equity; null when either is not positive")
    status: str | None
    margin_model: str | None = Field(
        default=None, description="the cross scope's margin model (standard or portfolio); null without one"
    )
    as_of_position: Position | None


class PositionView(BaseModel):
    instrument: str
    margin_mode: str = Field(description="cross or isolated")
    quantity: DecimalString = Field(description="signed: negative is short")
    entry_price: DecimalString | None
    cost: DecimalString
    realised_pnl: DecimalString
    isolated_margin: DecimalString
    funding_paid: DecimalString
    adl_rank: DecimalString | None = Field(
        default=None, description="auto-deleveraging rank (CONTRACT v2); null when it has none"
    )
    adl_quantile: int | None = Field(default=None, description="1 to 5, 5 first in line for auto-deleveraging")


class GridCell(BaseModel):
    """A cell of a portfolio grid (CONTRACT v2): the price move and the volatility cell; an extreme
    cell (volatility unchanged, its loss counted at the grid's extreme_weight) says so."""

    move: DecimalString = Field(description="the price move of the underlying, e.g. '-0.16'")
    volatility: Literal["up", "unchanged", "down"]
    extreme: bool = Field(default=False, description="an extreme cell")


class WorstCell(GridCell):
    """The worst cell of one underlying's grid, as the decisions name it."""

    underlying: str


class UnderlyingMargin(BaseModel):
    """One underlying of a scope's open positions: dynamic margin's multiplier in force, and on a
    portfolio grid the underlying's requirement and worst cell (null under the standard model)."""

    underlying: str
    multiplier: DecimalString = Field(description="dynamic margin's multiplier in force (1 before its first sample)")
    initial_margin: DecimalString | None = Field(default=None, description="IM = max(W, S) of the grid")
    maintenance_margin: DecimalString | None = Field(default=None, description="maintenance_factor x IM")
    worst_cell: GridCell | None = Field(default=None, description="the cell of the largest (weighted) loss")


class MarginView(BaseModel):
    equity: DecimalString
    initial_margin: DecimalString
    maintenance_margin: DecimalString
    margin_ratio: DecimalString | None
    status: str
    margin_model: str = Field(default="standard", description="the model that margins the scope: standard or portfolio")
    underlyings: list[UnderlyingMargin] = Field(
        default_factory=list, description="per underlying of the scope's open positions"
    )


class OpenMarginCall(BaseModel):
    margin_call_id: str
    scope: str
    level: str
    deadline: Time | None
    issued_position: Position | None = Field(description="null in a replayed (as-of) view")
    cause_position: Position | None = Field(default=None, description="the event that caused the call (as-of view)")


class ShardBalances(BaseModel):
    """One shard's own copy of a system account (every shard keeps its own)."""

    as_of_position: Position
    balances: dict[str, DecimalString] = Field(description="asset -> amount")


class AsOfQuestion(BaseModel):
    """Which question a time-travel view answers (ledger time or event time)."""

    model_config = ConfigDict(extra="allow")

    question: str = Field(description="position, ledger_time or event_time")


class AccountView(BaseModel):
    """Balances, positions, margin by scope and open calls; the cross scope's figures repeated at
    the top level (null when the account has no cross scope)."""

    account_id: str
    as_of_position: Position
    balances: dict[str, DecimalString] = Field(description="asset -> amount")
    positions: list[PositionView]
    margin: dict[str, MarginView] = Field(description="scope ('cross' or an isolated instrument) -> margin")
    open_margin_calls: list[OpenMarginCall]
    equity: DecimalString | None = None
    initial_margin: DecimalString | None = None
    maintenance_margin: DecimalString | None = None
    margin_ratio: DecimalString | None = None
    status: str | None = None
    margin_model: str | None = Field(
        default=None, description="the cross scope's margin model (standard or portfolio); null for system accounts"
    )
    multipliers: dict[str, DecimalString] = Field(
        default_factory=dict, description="underlying -> dynamic margin's multiplier in force, per underlying held"
    )
    worst_cells: list[WorstCell] = Field(
        default_factory=list, description="per underlying of a portfolio cross scope, its grid's worst cell"
    )
    shards: dict[str, ShardBalances] | None = Field(
        default=None, description="system accounts: each shard's balances (balances is their total)"
    )
    as_of: AsOfQuestion | None = Field(default=None, description="time-travel views: the question answered")


class Event(BaseModel):
    """One event of the log, as appended (payload decimals are strings, as on the wire)."""

    position: Position
    shard: int
    stream: str
    stream_version: int
    type: str
    schema_version: int
    payload: dict[str, Any]
    occurred_at: Time = Field(description="event time")
    recorded_at: Time = Field(description="ledger time")
    cause_position: Position | None
    hash: str = Field(description="SHA-256 of the row, hex")


class HistoryItem(BaseModel):
    position: Position
    type: str
    occurred_at: Time
    recorded_at: Time
    payload: dict[str, Any]


# ------------------------------------------------------------------------------------------------
# risk


class MarginCall(BaseModel):
    margin_call_id: str
    account_id: str
    scope: str
    level: str = Field(description="warning, maintenance or liquidation")
    status: str = Field(description="open, resolved, liquidated or bankrupt")
    issued_position: Position
    issued_at: Time
    deadline: Time | None
    last_position: Position
    payload: dict[str, Any] = Field(description="the figures of the last decision about the call")
    as_of_position: Position


class Liquidation(BaseModel):
    liquidation_id: str
    account_id: str
    scope: str
    instrument: str
    side: str
    quantity: DecimalString
    filled_quantity: DecimalString
    bankruptcy_price: DecimalString
    status: str
    issued_position: Position
    as_of_position: Position


class InsuranceFund(BaseModel):
    account_id: str
    balances: dict[str, DecimalString] = Field(description="asset -> amount, the total over the shards")
    as_of_position: Position | None
    shards: dict[str, ShardBalances] = Field(default_factory=dict, description="each shard's fund")
    movements: list[Event] = Field(description="a page of the events that moved the fund")
    next_after: str | None = Field(description="the cursor of the next page of movements; null on the last")


# ------------------------------------------------------------------------------------------------
# operations


class DeadLetter(BaseModel):
    id: int
    shard: int
    topic: str
    partition: int
    offset: int
    key: str | None = Field(description="the record's key, base64")
    raw: str = Field(description="the record's value, base64")
    error: str = Field(description="why it was rejected, in a sentence")
    idempotency_key: str | None
    existing_payload: dict[str, Any] | None = Field(description="the logged version, for a conflicting duplicate")
    received_at: Time


class ShardStatus(BaseModel):
    head_position: Position
    events: int


class AuditStatus(BaseModel):
    """The head of the log, counts and the outbox backlog. Open to more fields (extra="allow"), so
    a figure added to the status before it is declared here still reaches the client."""

    model_config = ConfigDict(extra="allow")

    log_position: Position
    events_total: int
    shards: dict[str, ShardStatus] = Field(description="shard number -> its head and event count")
    dead_letters_total: int
    outbox_unpublished: int = Field(description="outbox rows not yet acknowledged by the broker")
    outbox_oldest_unpublished_at: Time | None = Field(
        default=None, description="when the oldest of them was written; null when there is none"
    )
    outbox_oldest_unpublished_age_s: float | None = Field(
        default=None, description="how long it has waited, in seconds (to the millisecond); null when there is none"
    )
    last_recorded_at: Time | None


class Health(BaseModel):
    status: str = Field(description="'ok', or 'database unavailable' with 503")
