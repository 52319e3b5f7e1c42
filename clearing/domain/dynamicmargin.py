"""Dynamic margin (CONTRACT v2): the EWMA volatility of an underlying's marks sampled at event-time
boundaries, the multiplier it gives, and the parameters that multiplier scales. Pure functions:
no clock (DESIGN.md v2: the samples are decisions of the fold, appended as events and replayed).

Boundaries are the multiples of ``sample_seconds`` of event time since 1970-01-01T00:00:00Z. Event
time is the largest occurred_at applied so far; an event with a later occurred_at crosses every
boundary b with event_time <= b < occurred_at (``boundaries_crossed``), and each is sampled before
that event is applied, with the underlying's last applied mark (every applied mark is then at or
before b, since none is later than event time). So when one event crosses several boundaries, the
first takes the last mark and the others repeat it (a boundary with no new mark repeats the
sample: r = 0). A boundary is sampled only while the block is in force.

For one underlying with the block's lambda, initial_volatility (sigma_0), reference_volatility,
multiplier_floor, multiplier_cap and release_buffer (``sample``):

* t = 0, the first boundary with an applied mark: S_0 = that mark, no return, sigma_0 =
  initial_volatility; before it the multiplier is 1.
* t >= 1: r_t = ln(S_t / S_{t-1}); sigma_t^2 = lambda sigma_{t-1}^2 + (1 - lambda) r_t^2 (per sample
  period, not annualised).
* raw_t = min(max(sigma_t / reference_volatility, multiplier_floor), multiplier_cap);
  multiplier_0 = (1 + release_buffer) raw_0;
  multiplier_t = min((1 + release_buffer) raw_t, max(raw_t, multiplier_{t-1})): a rise is absorbed by
  the buffer, and the multiplier comes down only as far as raw x (1 + buffer) forces it.

Digits. ln and sqrt run under ``decimalmath``'s fixed context; volatility and raw_multiplier are
rounded half-even to 1e-12 (``numbers.round_model_value``: the wire's figures). The multiplier is
not rounded: it is raw, (1 + release_buffer) x raw or the previous multiplier, so it is exact with
at most 12 places + the buffer's, and keeps raw <= multiplier <= (1 + buffer) x raw exactly (a
rounded product could pass the upper bound by half a unit). The next sample starts from the
published figures, so a state rebuilt from the decision events alone (``apply``) continues exactly
as the live one did.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

from clearing.domain.decimalmath import PRICING_PRECISION_DIGITS, contexts
from clearing.domain.numbers import ONE, ZERO, exact, round_model_value, to_wire
from clearing.domain.params import (
    CompiledTier,
    DynamicMarginSpec,
    InstrumentSpec,
    OptionMarginRates,
    PortfolioMarginSpec,
)

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# The most boundaries one event may cross. Each is a decision event of its own (CONTRACT v2), so
# an event after a long silence would append one per boundary in one step: a week of samples at
# the shortest period (params.SAMPLE_SECONDS_MIN = 60) is allowed, beyond that the event is
# refused with this limit named, never sampled in part.
BOUNDARIES_PER_EVENT_MAX: Final = 7 * 24 * 60


class DynamicMarginError(ValueError):
    """A sample cannot be taken (an event that crosses more than ``BOUNDARIES_PER_EVENT_MAX``
    boundaries, a non-positive mark, a time without a zone); the message says which."""


def epoch_seconds(at: datetime) -> tuple[int, int]:
    """(whole seconds since the epoch, microseconds) of a zoned time, exactly."""
    if at.tzinfo is None:
        raise DynamicMarginError(f"dynamic margin needs times with a zone, got {at.isoformat()}")
    elapsed = at - EPOCH
    return elapsed.days * 86_400 + elapsed.seconds, elapsed.microseconds


def boundaries_crossed(event_time: datetime | None, occurred_at: datetime, sample_seconds: int) -> range:
    """The boundaries (seconds since the epoch) that an event at ``occurred_at`` crosses, when the
    event time before it is ``event_time`` (None: nothing applied yet, nothing to cross): every
    multiple b of ``sample_seconds`` with event_time <= b < occurred_at, ascending."""
    if event_time is None:
        return range(0)
    if sample_seconds <= 0:
        raise DynamicMarginError(f"sample_seconds must be positive, got {sample_seconds}")
    start_seconds, start_micro = epoch_seconds(event_time)
    end_seconds, end_micro = epoch_seconds(occurred_at)
    first = -(-start_seconds // sample_seconds) * sample_seconds  # the first multiple >= event_time
    if start_micro and first == start_seconds:
        first += sample_seconds  # event_time is past that second's start
    # b < occurred_at: a boundary equal to occurred_at's whole second counts only when there is a
    # fraction past it.
    last = end_seconds if end_micro else end_seconds - 1
    crossed = range(first, last + 1, sample_seconds)
    if len(crossed) > BOUNDARIES_PER_EVENT_MAX:
        raise DynamicMarginError(
            f"an event at {occurred_at.isoformat()} crosses {len(crossed)} sample boundaries of {sample_seconds} s "
            f"since event time {event_time.isoformat()}; at most BOUNDARIES_PER_EVENT_MAX = "
            f"{BOUNDARIES_PER_EVENT_MAX} are sampled in one step (publish a mark of the underlying at least "
            "that often, or lengthen sample_seconds)"
        )
    return crossed


def boundary_time(seconds: int) -> datetime:
    """A boundary as a time (UTC)."""
    return EPOCH + timedelta(seconds=seconds)


@dataclass(frozen=True, slots=True)
class VolatilityState:
    """What dynamic margin keeps per underlying between samples. Before the first sample
    (``started`` false) the multiplier is 1 and nothing else is known."""

    underlying: str
    started: bool = False
    sample_at: datetime | None = None
    sample_price: Decimal | None = None  # S_{t-1}
    volatility: Decimal = ZERO  # sigma_{t-1}, as published
    raw_multiplier: Decimal = ONE
    multiplier: Decimal = ONE
    samples: int = 0  # decisions taken so far (t + 1)


@dataclass(frozen=True, slots=True)
class RatesChange:
    """One sample's decision (a ``MarginRatesChanged`` event and a ``margin_rates_changed``
    message): the figures on the wire, and those behind them for an explanation."""

    underlying: str
    sample_at: datetime
    sample_price: Decimal
    log_return: Decimal | None  # None at t = 0
    volatility: Decimal  # sigma_t, 12 places half-even
    raw_multiplier: Decimal  # 12 places half-even
    multiplier: Decimal  # exact (module docstring)
    previous_multiplier: Decimal
    index: int  # t

    @property
    def changed(self) -> bool:
        return self.multiplier != self.previous_multiplier


def _spell_time(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def change_payload(change: RatesChange) -> dict[str, Any]:
    """The decision's figures as strings, as a ``MarginRatesChanged`` event carries them: the
    ``margin_rates_changed`` message's own (underlying, sample_at, volatility, raw_multiplier,
    multiplier; the fold adds parameters_version and position) and what ``apply`` needs to go on
    from the event alone (sample_price, and for explanations log_return, previous_multiplier,
    index). Every figure is spelled with all its digits (``numbers.to_wire``), none rounded here."""
    return {
        "underlying": change.underlying,
        "sample_at": _spell_time(change.sample_at),
        "sample_price": to_wire(change.sample_price),
        "log_return": None if change.log_return is None else to_wire(change.log_return),
        "volatility": to_wire(change.volatility),
        "raw_multiplier": to_wire(change.raw_multiplier),
        "multiplier": to_wire(change.multiplier),
        "previous_multiplier": to_wire(change.previous_multiplier),
        "index": change.index,
    }


def change_from_payload(payload: Mapping[str, Any]) -> RatesChange:
    """``change_payload`` read back: the same decision, figure for figure."""
    log_return = payload["log_return"]
    return RatesChange(
        underlying=str(payload["underlying"]),
        sample_at=datetime.fromisoformat(str(payload["sample_at"])).astimezone(UTC),
        sample_price=Decimal(payload["sample_price"]),
        log_return=None if log_return is None else Decimal(log_return),
        volatility=Decimal(payload["volatility"]),
        raw_multiplier=Decimal(payload["raw_multiplier"]),
        multiplier=Decimal(payload["multiplier"]),
        previous_multiplier=Decimal(payload["previous_multiplier"]),
        index=int(payload["index"]),
    )


def apply(state: VolatilityState, change: RatesChange) -> VolatilityState:
    """The state after a decision: what the next sample starts from (the published figures)."""
    return replace(
        state,
        started=True,
        sample_at=change.sample_at,
        sample_price=change.sample_price,
        volatility=change.volatility,
        raw_multiplier=change.raw_multiplier,
        multiplier=change.multiplier,
        samples=change.index + 1,
    )


@exact
def sample(
    spec: DynamicMarginSpec, state: VolatilityState, boundary_at: datetime, mark: Decimal | None
) -> tuple[VolatilityState, RatesChange | None]:
    """The sample at ``boundary_at`` with ``mark``, the underlying's last applied mark at or before
    it (None: never marked). Returns the new state and the decision (None, and the state as it
    was, while the underlying has never been marked)."""
    if mark is None:
        if not state.started:
            return state, None
        mark = state.sample_price
        if mark is None:  # pragma: no cover - a started state has its sample
            raise DynamicMarginError(f"dynamic margin {spec.underlying}: a started state without its sample")
    if not mark > ZERO:
        raise DynamicMarginError(f"dynamic margin {spec.underlying}: a sample needs a positive mark, got {mark}")
    buffered = ONE + spec.release_buffer
    if not state.started or state.sample_price is None:
        volatility = round_model_value(spec.initial_volatility)
        raw = _raw(spec, volatility)
        multiplier = buffered * raw
        log_return: Decimal | None = None
        previous = ONE
    else:
        context = contexts(PRICING_PRECISION_DIGITS)[0].copy()
        log_return = context.ln(context.divide(mark, state.sample_price))
        variance = context.add(
            context.multiply(spec.lambda_, context.multiply(state.volatility, state.volatility)),
            context.multiply(ONE - spec.lambda_, context.multiply(log_return, log_return)),
        )
        volatility = round_model_value(context.sqrt(variance))
        raw = _raw(spec, volatility)
        previous = state.multiplier
        multiplier = min(buffered * raw, max(raw, previous))
    change = RatesChange(
        underlying=spec.underlying,
        sample_at=boundary_at,
        sample_price=mark,
        log_return=log_return,
        volatility=volatility,
        raw_multiplier=raw,
        multiplier=multiplier,
        previous_multiplier=previous,
        index=state.samples,
    )
    return apply(state, change), change


def _raw(spec: DynamicMarginSpec, volatility: Decimal) -> Decimal:
    ratio = contexts(PRICING_PRECISION_DIGITS)[0].copy().divide(volatility, spec.reference_volatility)
    return round_model_value(min(max(ratio, spec.multiplier_floor), spec.multiplier_cap))


def samples_for_event(
    spec: DynamicMarginSpec,
    state: VolatilityState,
    event_time: datetime | None,
    occurred_at: datetime,
    mark: Decimal | None,
) -> Iterator[tuple[VolatilityState, RatesChange]]:
    """Every decision an event at ``occurred_at`` causes for ``spec``'s underlying, in boundary
    order, each with the state after it: the boundaries crossed (``boundaries_crossed``), sampled
    with ``mark``, the underlying's last applied mark (the same for every one of them: the event
    is applied after all its samples). Boundaries before the first mark take no sample."""
    for seconds in boundaries_crossed(event_time, occurred_at, spec.sample_seconds):
        state, change = sample(spec, state, boundary_time(seconds), mark)
        if change is not None:
            yield state, change


# ------------------------------------------------------------------------------------------------
# The parameters a multiplier scales (CONTRACT v2): tier rates and so their maintenance and initial
# amounts, option margin rates, and the portfolio price range (``scenarios.scenario_grid`` takes
# the multiplier). A multiplier of 1 gives back the document's own values.


@exact
def scaled_tier_table(spec: InstrumentSpec, multiplier: Decimal) -> tuple[CompiledTier, ...]:
    """The instrument's tiers with each rate x multiplier. Each amount is a sum of cap x (rate
    difference) terms (CONTRACT.md), so scaling every rate scales every amount by the same
    multiplier: the requirement stays continuous across tiers, and the caps do not move. Exact
    products: a requirement computed from them rounds once, where it is used. Rates are not
    capped at 1: a requirement above the notional is what the multiplier asks for."""
    if multiplier == ONE:
        return spec.tier_table
    return tuple(
        CompiledTier(
            index=tier.index,
            notional_floor=tier.notional_floor,
            notional_cap=tier.notional_cap,
            initial_rate=tier.initial_rate * multiplier,
            maintenance_rate=tier.maintenance_rate * multiplier,
            initial_amount=tier.initial_amount * multiplier,
            maintenance_amount=tier.maintenance_amount * multiplier,
        )
        for tier in spec.tier_table
    )


@exact
def scaled_option_margin(rates: OptionMarginRates, multiplier: Decimal) -> OptionMarginRates:
    """Standard option margin rates x multiplier (exact). Built without the document's validation
    (``model_construct``): a scaled rate may pass 1, which a document may not state but the
    multiplier may ask for; the order maintenance <= minimum <= initial is kept by scaling."""
    if multiplier == ONE:
        return rates
    return OptionMarginRates.model_construct(
        underlying=rates.underlying,
        initial_rate=rates.initial_rate * multiplier,
        minimum_rate=rates.minimum_rate * multiplier,
        maintenance_rate=rates.maintenance_rate * multiplier,
    )


@exact
def scaled_price_range(spec: PortfolioMarginSpec, multiplier: Decimal) -> Decimal:
    """price_range x multiplier: the range ``scenarios.scenario_grid(spec, multiplier)`` spreads."""
    return spec.price_range * multiplier
